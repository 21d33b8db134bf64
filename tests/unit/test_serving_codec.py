"""Proto Event <-> wire dict, and the collector's validation triage (no Kafka)."""

from __future__ import annotations

import json

import pytest

from personalization.events import ValidationLimits, validate_event
from personalization.settings import Settings
from personalization.v1 import events_pb2
from serving.codec import event_to_wire, wire_to_event
from serving.collector import CollectUnavailable, EventCollector, triage

NOW = 1_700_000_000_000

FULL = {
    "event_id": "e-1",
    "user_id": "u-7",
    "event_type": "add_to_cart",
    "item_id": "sku-9",
    "category": "shoes",
    "price": 59.9,
    "quantity": 2,
    "event_time": NOW - 1000,
    "context": {"device": "mobile", "country": "DE", "session_id": "s-1", "page": "/p/sku-9"},
    "properties": {"age_band": "25-34"},
}


def test_full_event_round_trips_through_proto():
    proto = wire_to_event(FULL)
    assert proto.event_time_ms == NOW - 1000
    wire = event_to_wire(proto)
    assert wire == FULL
    # Bytes on the gRPC wire decode to the same dict.
    again = events_pb2.Event.FromString(proto.SerializeToString())
    assert event_to_wire(again) == FULL


def test_validated_event_round_trips():
    event = validate_event(FULL, now_ms=NOW)
    assert validate_event(event_to_wire(wire_to_event(event.to_json_dict())), now_ms=NOW) == event


def test_zero_values_are_absent_on_the_wire():
    proto = events_pb2.Event(user_id="u", event_type="page_view", event_time_ms=NOW)
    assert event_to_wire(proto) == {"user_id": "u", "event_type": "page_view", "event_time": NOW}
    event = validate_event(event_to_wire(proto), now_ms=NOW)
    assert event.quantity == 1 and event.event_id.startswith("h-")


def test_client_side_conversion_accepts_iso_and_seconds():
    assert wire_to_event({"event_time": "2023-11-14T22:13:20Z"}).event_time_ms == NOW
    assert wire_to_event({"event_time": NOW / 1000}).event_time_ms == NOW


def test_client_side_conversion_rejects_unrepresentable_values():
    with pytest.raises(ValueError):
        wire_to_event({"price": "cheap"})
    with pytest.raises(ValueError):
        wire_to_event({"event_time": "yesterday"})


def test_triage_reports_rejections_with_their_index():
    events = [
        wire_to_event(FULL),
        events_pb2.Event(event_type="product_view", item_id="x", event_time_ms=NOW),  # no user
        events_pb2.Event(user_id="u", event_type="teleport", event_time_ms=NOW),
        events_pb2.Event(user_id="u", event_type="purchase", event_time_ms=NOW),  # no item
        events_pb2.Event(user_id="u", event_type="page_view"),  # no time
        events_pb2.Event(user_id="u", event_type="pv", item_id="i", event_time_ms=NOW * 10),
        events_pb2.Event(user_id="u", event_type="click", item_id="i", event_time_ms=NOW),
    ]
    result = triage(events, NOW, ValidationLimits())
    assert [index for index, _ in result.valid] == [0, 6]
    assert [(index, r.reason) for index, r, _ in result.invalid] == [
        (1, "missing_user_id"),
        (2, "unknown_event_type"),
        (3, "missing_item_id"),
        (4, "invalid_event_time"),
        (5, "event_time_in_future"),
    ]
    # The DLQ keeps the raw payload as the collector saw it.
    assert json.loads(result.invalid[1][2])["event_type"] == "teleport"


def test_triage_rejects_oversized_events():
    big = events_pb2.Event(user_id="u", event_type="page_view", event_time_ms=NOW)
    big.properties["blob"] = "x" * 2000
    result = triage([big], NOW, ValidationLimits(max_event_bytes=1000))
    assert result.invalid[0][1].reason == "payload_too_large"


class FakeProducer:
    """Records produce calls; acknowledges them on poll unless told to hang."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self._callbacks: list = []

    def produce(self, topic, value, key=None, on_delivery=None):
        self.records.append((topic, key, value))
        self._callbacks.append((on_delivery, topic))

    def poll(self, timeout):
        if self.ack:
            while self._callbacks:
                callback, topic = self._callbacks.pop()
                callback(None, _Msg(topic))
        return 0

    def flush(self, timeout):
        return 0


class _Msg:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


def test_collector_routes_by_topic_family_and_dead_letters_the_rest():
    producer = FakeProducer()
    collector = EventCollector(Settings(), producer=producer, clock_ms=lambda: NOW)
    try:
        events = [
            wire_to_event(FULL),
            wire_to_event({**FULL, "event_type": "buy"}),
            wire_to_event({**FULL, "event_type": "rating"}),
            events_pb2.Event(user_id="u", event_type="nope", event_time_ms=NOW),
        ]
        result = collector.collect(events)
    finally:
        collector.close()
    assert result.accepted == 3 and result.rejected == [(3, "unknown_event_type")]
    topics = [topic for topic, _, _ in producer.records]
    assert topics == ["clickstream", "purchase_events", "engagement_metrics", "events_dlq"]
    assert producer.records[0][1] == b"u-7"
    dlq = json.loads(producer.records[3][2])
    assert dlq["source"] == "grpc" and dlq["reason"] == "unknown_event_type"


def test_collector_raises_when_kafka_does_not_ack():
    settings = Settings.model_validate({"serving": {"collect_ack_timeout_s": 0.05}})
    collector = EventCollector(settings, producer=FakeProducer(ack=False), clock_ms=lambda: NOW)
    try:
        with pytest.raises(CollectUnavailable, match="0 of 1"):
            collector.collect([wire_to_event(FULL)])
    finally:
        collector.close()


def test_covisitation_pairs_count_from_both_sides():
    # The job stores a pair once, at the later item: serving's catalog adds the other
    # direction (and sums a pair stored on both sides, as older job versions did).
    import numpy as np

    from serving.catalog_snapshot import symmetric_neighbours

    lists = symmetric_neighbours(
        np.array([1, 2, 2]), np.array([0, 0, 1]), np.array([0.5, 0.25, 2.0]), n=3
    )
    as_dict = {k: dict(zip(v[0].tolist(), v[1].tolist(), strict=True)) for k, v in lists.items()}
    assert as_dict == {0: {1: 0.5, 2: 0.25}, 1: {0: 0.5, 2: 2.0}, 2: {0: 0.25, 1: 2.0}}
    both = symmetric_neighbours(np.array([0, 1]), np.array([1, 0]), np.array([1.0, 1.0]), n=2)
    assert both[0][1].tolist() == [2.0] and both[1][1].tolist() == [2.0]
    assert (
        symmetric_neighbours(
            np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([]), n=0
        )
        == {}
    )
