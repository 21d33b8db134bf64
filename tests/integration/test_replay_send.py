"""``personalize send`` replays a shop's CSV export into a real Kafka: mapped columns and
event types, the file's time gaps divided by ``--speed`` (in the events' times and in
when they reach the broker), bad rows reported by line, and ``--keep-times`` sending
the file's own times with a warning about the job's admission window."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer

from personalization import events as ev
from personalization.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

MAP = "event_time=when,user_id=customer,event_type=what,item_id=product,price=amount"
EVENT_TYPES = "seen=product_view,bag=add_to_cart,paid=purchase,find=-"
# Source offsets (s) of the good rows and what each row becomes.
ROWS = [
    (0.0, "seen", "p1", ""),
    (2.0, "seen", "p2", ""),
    (5.0, "bag", "p2", ""),
    (10.0, "paid", "p2", "19.50"),
]


def _write_export(path: Path, user: str, t0_ms: int) -> None:
    lines = ["when,customer,what,product,amount"]
    for offset, what, item, amount in ROWS[:3]:
        lines.append(f"{t0_ms + round(offset * 1000)},{user},{what},{item},{amount}")
    lines.append(f"not-a-time,{user},seen,p3,")  # line 5: a bad row
    lines.append(f"{t0_ms + 6_000},{user},find,,")  # line 6: skipped on purpose
    offset, what, item, amount = ROWS[3]
    lines.append(f"{t0_ms + round(offset * 1000)},{user},{what},{item},{amount}")
    path.write_text("\n".join(lines) + "\n")


def _send(settings: Settings, *args: str, env: dict[str, str] | None = None) -> str:
    environment = {
        **os.environ,
        "PZ_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "PZ_RUN_DIR": settings.run_dir,
        **(env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "send", "--quiet", *args],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _read_back(settings: Settings, user: str, n: int) -> list[tuple[int, dict[str, Any]]]:
    """(broker timestamp ms, event) of the user's events on the input topics, by time."""
    k = settings.kafka
    consumer = Consumer(
        {
            "bootstrap.servers": k.bootstrap_servers,
            "group.id": f"replay-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    found: list[tuple[int, dict[str, Any]]] = []
    try:
        consumer.subscribe(list(k.event_topics))
        deadline = time.monotonic() + 60
        while len(found) < n and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if msg.key() != user.encode():
                continue
            kind, stamp = msg.timestamp()
            assert kind == TIMESTAMP_CREATE_TIME
            found.append((stamp, json.loads(msg.value() or b"{}")))
    finally:
        consumer.close()
    assert len(found) == n, found
    return sorted(found, key=lambda pair: pair[1]["event_time"])


def test_send_mapped_csv_at_speed_keeps_the_gaps_divided(
    kafka_broker: Settings, tmp_path: Path
) -> None:
    user = f"shop-{uuid.uuid4().hex[:8]}"
    export = tmp_path / "orders.csv"
    _write_export(export, user, t0_ms=1_714_557_600_000)
    speed = 5.0
    started_ms = time.time_ns() // 1_000_000
    out = _send(
        kafka_broker,
        "--file",
        str(export),
        "--map",
        MAP,
        "--event-types",
        EVENT_TYPES,
        "--speed",
        str(speed),
    )
    assert "sent 4 events" in out, out
    assert "1 bad rows (invalid_event_time 1); first: line 5: invalid_event_time" in out, out
    assert "skipped on purpose (event types mapped to -): find 1" in out, out

    got = _read_back(kafka_broker, user, len(ROWS))
    times = [event["event_time"] for _, event in got]
    # The first event is "now"; the rest keep their gaps divided by the speed.
    assert started_ms <= times[0] <= started_ms + 30_000
    assert [t - times[0] for t in times] == [round(o * 1000 / speed) for o, *_ in ROWS]
    # And they reached the broker paced to match: not before their time, not much after.
    for broker_ms, event in got:
        assert event["event_time"] - 50 <= broker_ms <= event["event_time"] + 1_500
    sent_gaps = [b - got[0][0] for b, _ in got]
    for gap, (offset, *_) in zip(sent_gaps, ROWS, strict=True):
        assert offset * 1000 / speed - 50 <= gap <= offset * 1000 / speed + 1_500, sent_gaps
    # The mapped fields.
    assert [(e["event_type"], e.get("item_id")) for _, e in got] == [
        (ev.PRODUCT_VIEW, "p1"),
        (ev.PRODUCT_VIEW, "p2"),
        (ev.ADD_TO_CART, "p2"),
        (ev.PURCHASE, "p2"),
    ]
    assert got[3][1]["price"] == 19.5
    # Ids from the file and line, with the run's suffix (a re-timed replay counts again).
    assert [re.sub(r"-\d+$", "", e["event_id"]) for _, e in got] == [
        "orders-2",
        "orders-3",
        "orders-4",
        "orders-7",
    ]


def test_send_keep_times_sends_the_files_times_and_warns_about_the_window(
    kafka_broker: Settings, tmp_path: Path
) -> None:
    user = f"backfill-{uuid.uuid4().hex[:8]}"
    export = tmp_path / "history.csv"
    t0_ms = time.time_ns() // 1_000_000 - 2 * 3600 * 1000  # two hours ago
    _write_export(export, user, t0_ms=t0_ms)
    out = _send(
        kafka_broker,
        "--file",
        str(export),
        "--map",
        MAP,
        "--event-types",
        EVENT_TYPES,
        "--keep-times",
        env={"PZ_FEATURES__MAX_EVENT_AGE_S": "3600"},
    )
    assert "warning: event history-2 at" in out and "event_time_too_old" in out, out
    assert "4 of 4 events are outside the admission window" in out, out
    assert "PZ_FEATURES__MAX_EVENT_AGE_S" in out

    got = _read_back(kafka_broker, user, len(ROWS))
    assert [e["event_time"] for _, e in got] == [t0_ms + round(o * 1000) for o, *_ in ROWS]
    # A backfill's ids are the file's: sending it again is the same events.
    assert [e["event_id"] for _, e in got] == ["history-2", "history-3", "history-4", "history-7"]
    # Within the window: no warning.
    again = _send(
        kafka_broker,
        "--file",
        str(export),
        "--map",
        MAP,
        "--event-types",
        EVENT_TYPES,
        "--keep-times",
        "--count",
        "1",
    )
    assert "warning" not in again and "sent 1 events" in again, again
