"""Learned segments in the real job: a user's row carries a cluster, and a user whose
behaviour moves them to another cluster fires ``segment_changed`` on the triggers topic.

The user browses shoes in one session, then, a day later (event time), buys books for a
lot of money: the second session's first event re-clusters them (a new session), and
from a browser's cell to a buyer's the distance is large whatever the centroids learned
from the session's other users, so the id changes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer

from personalization.feature_store import feature_store
from personalization.settings import Settings
from tests.identity import stored_id
from tests.waiting import wait_for
from traffic.sender import TrafficSender

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def events(user: str, start_ms: int) -> list[dict[str, Any]]:
    out = []
    t = start_ms
    for i in range(6):
        t += 30_000
        out.append(
            {
                "event_id": f"{user}-v{i}",
                "user_id": user,
                "event_type": "product_view",
                "item_id": f"shoe-{i % 3}",
                "category": "shoes",
                "event_time": t,
            }
        )
    t += DAY_MS
    for i in range(4):
        t += 30_000
        out.append(
            {
                "event_id": f"{user}-p{i}",
                "user_id": user,
                "event_type": "purchase",
                "item_id": f"book-{i}",
                "category": "books",
                "price": 900.0,
                "event_time": t,
            }
        )
    return out


def test_segment_changed_fires_in_the_job(pipeline: Settings) -> None:
    user = f"seg-{uuid.uuid4().hex[:10]}"
    # Two days back, so both sessions are in the past and within the admission window.
    start = int(time.time() * 1000) - 2 * DAY_MS
    sent = events(user, start)
    stored = stored_id(pipeline, user)

    def events_total() -> int:
        got = (
            feature_store(pipeline)
            .get_online_features(
                features=["user_profile:events_total"], entity_rows=[{"user_id": stored}]
            )
            .to_dict()
        )
        return int(got["events_total"][0] or 0)

    # Views and purchases travel on different topics: the purchases go once the views
    # are in the user's row, so the job sees the two sessions in order.
    assert TrafficSender(pipeline, rate=0).send(iter(sent[:6])).sent == 6
    wait_for(lambda: events_total() == 6 or None, 60, "the views in the user's row", 0.5)
    assert TrafficSender(pipeline, rate=0).send(iter(sent[6:])).sent == len(sent) - 6

    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([pipeline.kafka.triggers_topic])
    found: list[dict[str, Any]] = []

    def changed() -> list[dict[str, Any]] | None:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            record = json.loads(msg.value() or b"{}")
            if record.get("user_id") == stored and record.get("trigger") == "segment_changed":
                found.append(record)
        return found or None

    try:
        (record,) = wait_for(changed, 120, "a segment_changed trigger of the user", 0.0)[:1]
    finally:
        consumer.close()
    assert record["kind"] == "clustering"
    evidence = record["evidence"]
    assert evidence["from_cluster"] != evidence["to_cluster"]
    assert evidence["from_cluster"] >= 0 and evidence["to_cluster"] >= 0
    assert evidence["distance"] >= 0
    # Fired at the event that re-clustered them: the first purchase, a day later.
    assert record["time"] == sent[6]["event_time"]

    def row() -> dict[str, Any] | None:
        got = (
            feature_store(pipeline)
            .get_online_features(
                features=["user_profile:cluster_id", "user_profile:events_total"],
                entity_rows=[{"user_id": stored}],
            )
            .to_dict()
        )
        return got if got["events_total"][0] == len(sent) else None

    online = wait_for(row, 60, "the user's last row in Redis", 0.5)
    # The purchases after the first stayed in the buyer's cluster (re-clustered only at
    # a new session or every segments.update_every_events events).
    assert online["cluster_id"][0] == evidence["to_cluster"]
