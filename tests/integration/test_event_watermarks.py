"""The behaviour events' watermark is per Kafka partition (flink_jobs/event_source.py).

A backlog whose partitions carry unequal shares of the events: one partition holds 40
times the events of each other one over the same 100 days. The source reads partitions in equal
runs of bytes, so the light partitions reach day 100 while partition 0 is still in its
first days. A watermark over the merged partitions followed the light ones, and the
heavy partition's records arrived weeks behind it (their users' timers fired early:
a 72-day gap under a 90-day retention expired a user). Per-partition watermarks keep
every record ahead of the watermark, refused and future-dated records included.

Also: the SQL reading of the payload's event time agrees with Python's
(``parse_event_time_ms``) on every form the events accept.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from flink_jobs.python_env import embedded_python_path
from personalization.events import EventRejected, parse_event_time_ms
from personalization.settings import Settings

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
START_MS = 1_600_000_000_000
SPAN_DAYS = 100
# Events of the clickstream's partition 0, and of each of the other 11 partitions of the
# three event topics (every partition has some: an empty one holds the watermark until
# it is idle).
HEAVY, LIGHT = 4_000, 100
OUT_OF_ORDERNESS_MS = 5_000


@pytest.fixture(scope="module")
def backlog_settings(kafka_broker: Settings) -> Iterator[Settings]:
    """Event topics of this test's own (4 partitions each), holding the backlog."""
    suffix = uuid.uuid4().hex[:8]
    kafka = kafka_broker.kafka.model_copy(
        update={
            "clickstream_topic": f"wm-clicks-{suffix}",
            "purchase_topic": f"wm-purchases-{suffix}",
            "engagement_topic": f"wm-engagement-{suffix}",
            "flink_consumer_group": f"wm-{suffix}",
        }
    )
    flink = kafka_broker.flink.model_copy(
        update={"out_of_orderness_ms": OUT_OF_ORDERNESS_MS, "parallelism": 1}
    )
    settings = kafka_broker.model_copy(update={"kafka": kafka, "flink": flink})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    futures = admin.create_topics([NewTopic(t, 4, 1) for t in kafka.event_topics])
    for future in futures.values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
    for topic in kafka.event_topics:
        for partition in range(4):
            heavy = topic == kafka.clickstream_topic and partition == 0
            count = HEAVY if heavy else LIGHT
            for i in range(count):
                event = {
                    "event_id": f"{topic}-{partition}-{i}",
                    "user_id": f"user-{topic}-{partition}",
                    "event_type": "product_view",
                    "item_id": f"item-{i % 50}",
                    "category": "books",
                    "event_time": START_MS + i * SPAN_DAYS * DAY_MS // count,
                }
                producer.produce(topic, json.dumps(event), partition=partition)
                if not heavy and i % 25 == 0:
                    # Refused records: no time at all, and a time a century ahead.
                    # Neither may move the light partitions' watermarks.
                    producer.produce(topic, b"not json", partition=partition)
                    ahead = dict(event, event_id=f"ahead-{i}", event_time="2126-01-01")
                    producer.produce(topic, json.dumps(ahead), partition=partition)
    producer.flush(30)
    yield settings


class Arrivals:
    """What the keyed operator saw: ``events`` (user, event time, watermark at arrival)
    and ``timers`` (user, due time): each event arms an event-time timer at its time."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.timers: list[tuple[str, int]] = []


def _run(settings: Settings, done: Callable[[Arrivals], bool], timeout_s: float) -> Arrivals:
    """Reads the backlog through the job's events table, keyed by user, until ``done``
    (or ``timeout_s``: the job is cancelled and what arrived is returned)."""
    os.environ["PYTHONPATH"] = embedded_python_path()
    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedProcessFunction

    from flink_jobs.event_source import behaviour_events
    from flink_jobs.exchanges import KEYED_RECORD, keyed
    from flink_jobs.user_features_job import create_environment

    class Arrival(KeyedProcessFunction):  # type: ignore[misc]
        def process_element(self, value: str, ctx: Any) -> Iterator[str]:
            try:
                event_time = parse_event_time_ms(json.loads(value)["event_time"])
            except (ValueError, KeyError, EventRejected):
                event_time = -1
            timers = ctx.timer_service()
            if event_time > 0:
                timers.register_event_time_timer(event_time)
            yield json.dumps([ctx.get_current_key(), event_time, timers.current_watermark()])

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[str]:
            yield json.dumps([ctx.get_current_key(), timestamp])

    def by_user(row: Row) -> Row:
        try:
            return Row(str(json.loads(row[0])["user_id"]), row[0])
        except ValueError:
            return Row("unreadable", row[0])

    env = create_environment(settings, None)
    stream = behaviour_events(env, settings).map(by_user, output_type=KEYED_RECORD)
    arrived = keyed(stream).process(Arrival(), output_type=Types.STRING())
    seen = Arrivals()
    finished = threading.Event()
    results = arrived.execute_and_collect()

    def collect() -> None:
        try:
            for line in results:
                record = json.loads(line)
                if len(record) == 3:
                    seen.events.append((record[0], record[1], record[2]))
                else:
                    seen.timers.append((record[0], record[1]))
                if done(seen):
                    break
        except Exception:  # the job cancelled at the deadline
            pass
        finally:
            finished.set()

    threading.Thread(target=collect, daemon=True).start()
    finished.wait(timeout_s)
    results.close()
    return seen


def test_no_partition_runs_the_watermark_past_another(backlog_settings: Settings):
    light_partitions = 3 * 4 - 1
    expected_events = HEAVY + light_partitions * LIGHT
    heavy = f"user-{backlog_settings.kafka.clickstream_topic}-0"
    last_heavy = START_MS + (HEAVY - 1) * SPAN_DAYS * DAY_MS // HEAVY

    def events(seen: Arrivals) -> list[tuple[str, int, int]]:
        # Not the refused ones: unreadable, or a century ahead.
        span_end = START_MS + SPAN_DAYS * DAY_MS
        return [e for e in seen.events if e[0].startswith("user-") and 0 < e[1] < span_end]

    def done(seen: Arrivals) -> bool:
        # Every event, and the heavy partition's timers up to its last days: the
        # watermark advanced with it (not vacuous) once its records were read.
        return len(events(seen)) == expected_events and any(
            user == heavy and due >= last_heavy - DAY_MS for user, due in seen.timers
        )

    seen = _run(backlog_settings, done, timeout_s=120)
    arrived = events(seen)
    assert len(arrived) == expected_events
    late = [e for e in arrived if e[1] < e[2]]
    assert not late, f"{len(late)} events behind the watermark, first {late[:3]}"
    heavy_timers = [due for user, due in seen.timers if user == heavy]
    assert heavy_timers and max(heavy_timers) >= last_heavy - DAY_MS, (
        f"the watermark did not follow the heavy partition: {len(seen.timers)} timers"
    )
    # No refused record (unreadable, a century ahead) carried a watermark past the span.
    assert max(due for _, due in seen.timers) <= START_MS + SPAN_DAYS * DAY_MS


TIMES: list[Any] = [
    1_600_000_000_000,
    100_000_000_000,
    874_965_758,
    1_600_000_000,
    1_600_000_000.5,
    "1600000000000",
    " 1600000000 ",
    "2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00.123Z",
    "2024-05-01T12:00:00.123456+02:00",
    "2024-05-01T12:00:00-0530",
    "2024-05-01T12:00:00.1234567",
    "2024-05-01 12:00:00",
    "2024-05-01T12:00",
    "2024-05-01",
    "bad",
    True,
    None,
    -5,
    0,
    "NaN",
    {"a": 1},
    [1],
    "2024-13-01T00:00:00",
]


def test_sql_reads_event_times_as_python_does():
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from flink_jobs.event_source import event_time_sql

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("table.local-time-zone", "UTC")
    kafka_time_ms = 1_796_600_000_000  # 2026-12: every time above is before it
    payloads = [{"event_time": t} for t in TIMES]
    # The other field name; and a time further past the record's Kafka timestamp than the
    # future skew allows (Python refuses it against its clock): no time, no watermark.
    payloads += [{"event_time_ms": 1_600_000_000_000}, {"event_time": kafka_time_ms + 2 * DAY_MS}]
    rows = ", ".join(
        "('" + json.dumps(p).replace("'", "''") + f"', TO_TIMESTAMP_LTZ({kafka_time_ms}, 3))"
        for p in payloads
    )
    t_env.execute_sql(
        f"CREATE TEMPORARY VIEW times AS SELECT * FROM (VALUES {rows}) AS T(`value`, `kafka_time`)"
    )
    query = f"SELECT `value`, CAST({event_time_sql(86_400)} AS STRING) FROM times"
    got: dict[str, int | None] = {}
    with t_env.execute_sql(query).collect() as results:
        for value, text in results:
            got[value] = (
                None
                if text is None
                else int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)
            )
    for raw in TIMES:
        try:
            expected: int | None = parse_event_time_ms(raw)
        except EventRejected:
            expected = None
        assert got[json.dumps({"event_time": raw})] == expected, raw
    assert got[json.dumps(payloads[-2])] == 1_600_000_000_000
    assert got[json.dumps(payloads[-1])] is None
