"""The writer's background history flush and its commits, on a real Kafka and Redis.

``writer.process.HistoryFlusher`` writes the feature history off the consuming thread and
commits the offsets it covers only once the files are written: every consumed row ends in
the history and the group's offsets reach the end; with the history unwritable nothing
is committed (the rows would come again), while Redis still gets every row."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from feature_repo.names import USER_PROFILE
from personalization import offline_store as store
from personalization.feature_updates import FeatureUpdate, encode_record
from personalization.settings import Settings
from serving.online_features import UserFeatureReader
from writer.process import WriterStats, run_writer

pytestmark = pytest.mark.integration

ROWS = 240
T0_MS = 1_700_000_000_000


def _settings(base: Settings, history_dir: Path) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={
                    "feature_updates_topic": f"fu-history-{suffix}",
                    "writer_consumer_group": f"writer-history-{suffix}",
                }
            ),
            "feast": base.feast.model_copy(update={"project": f"pz_hist_{suffix}"}),
            "history": base.history.model_copy(
                update={
                    "enabled": True,
                    "dir": str(history_dir),
                    "flush_rows": 100,
                    "flush_interval_s": 0.3,
                }
            ),
        }
    )


def _produce_rows(settings: Settings) -> list[str]:
    k = settings.kafka
    admin = AdminClient({"bootstrap.servers": k.bootstrap_servers})
    for future in admin.create_topics([NewTopic(k.feature_updates_topic, 2, 1)]).values():
        future.result(timeout=30)
    users = [f"hist-u{i}" for i in range(ROWS)]
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})
    for i, user in enumerate(users):
        row = FeatureUpdate(
            USER_PROFILE,
            user,
            (T0_MS + i) * 1000,
            {"last_seen_ms": T0_MS + i, "first_seen_ms": T0_MS},
        )
        producer.produce(k.feature_updates_topic, key=user.encode(), value=encode_record([row]))
    assert producer.flush(30) == 0
    return users


def _run_until_consumed(settings: Settings, linger_s: float) -> WriterStats:
    """The writer's loop in a thread until every row was consumed, then ``linger_s``
    more (for a flush to be written and committed), then stopped."""
    stop = threading.Event()
    consumed = threading.Event()

    def on_batch(stats: WriterStats) -> None:
        if stats.rows_in >= ROWS:
            consumed.set()

    result: list[WriterStats] = []
    thread = threading.Thread(
        target=lambda: result.append(run_writer(settings, stop, on_batch=on_batch)), daemon=True
    )
    thread.start()
    assert consumed.wait(60), "the writer did not consume the rows"
    time.sleep(linger_s)
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and result
    return result[0]


def _committed(settings: Settings) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the end offsets) over the topic."""
    k = settings.kafka
    consumer = Consumer(
        {"bootstrap.servers": k.bootstrap_servers, "group.id": k.writer_consumer_group}
    )
    try:
        tps = [TopicPartition(k.feature_updates_topic, p) for p in (0, 1)]
        committed = consumer.committed(tps, timeout=10)
        ends = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return sum(max(tp.offset, 0) for tp in committed), ends
    finally:
        consumer.close()


def _stored_last_seen_ms(settings: Settings, user: str) -> int | None:
    """The user's ``last_seen_ms`` as serving reads it, None without a row."""
    reader = UserFeatureReader(settings)
    try:
        features = reader.read(user)
        return None if features is None else features.last_seen_ms
    finally:
        reader.close()


def test_every_row_reaches_the_history_before_its_offsets_are_committed(
    kafka_broker: Settings, redis_server: Settings, tmp_path: Path
) -> None:
    settings = _settings(redis_server, tmp_path / "history")
    users = _produce_rows(settings)
    # Mid-stream: rows written to Redis, a flush in flight or done, offsets behind it.
    stats = _run_until_consumed(settings, linger_s=1.0)
    assert stats.rows_in == ROWS
    history = store.read_view(settings.history_path, USER_PROFILE)
    assert sorted(history.column("user_id").to_pylist()) == sorted(users)
    committed, ends = _committed(settings)
    assert committed == ends == ROWS
    assert _stored_last_seen_ms(settings, users[-1]) == T0_MS + ROWS - 1


def test_nothing_is_committed_while_the_history_cannot_be_written(
    kafka_broker: Settings, redis_server: Settings, tmp_path: Path
) -> None:
    settings = _settings(redis_server, tmp_path / "history")
    users = _produce_rows(settings)
    # The view's folder cannot be created: a file is in its way (ensure_layout is done by
    # then, so block the day folder the rows go to).
    day = store._EPOCH.fromordinal(store._EPOCH.toordinal() + (T0_MS * 1000) // store._DAY_US)
    blocked = settings.history_path / USER_PROFILE / day.isoformat()
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("in the way")
    stats = _run_until_consumed(settings, linger_s=1.0)
    assert stats.rows_in == ROWS
    committed, ends = _committed(settings)
    assert ends == ROWS and committed == 0  # every row comes again to the next writer
    assert _stored_last_seen_ms(settings, users[0]) == T0_MS  # Redis got them all the same
