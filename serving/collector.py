"""The Collect front door: validate proto events and produce them to Kafka.

Valid events go to their topic family's topic (clickstream / purchase / engagement),
keyed by user id so one user's events stay in order on one partition; invalid ones go
to the DLQ with the reason, exactly as the Flink job would dead-letter them (both use
``personalization.events``); the DLQ keeps the first ``features.max_event_bytes`` of an
oversized event's JSON. A call returns only after Kafka acknowledged every record
of its batch (acks=all, idempotent producer).

Delivery is tracked per batch rather than with ``Producer.flush()``: ``flush`` waits for
every record in the shared producer, so concurrent Collect calls would wait for each
other. A poll thread serves the delivery callbacks and each batch waits on its own
event. A batch that times out may still be delivered later; callers retry it, and the
job drops the copies by ``event_id`` (events without one get a content-hash id, which
a retry reproduces).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Producer

from personalization.events import (
    Event,
    Rejection,
    ValidationLimits,
    dead_letter,
    parse_event,
    topic_family,
)
from personalization.settings import Settings
from personalization.thread_names import NamedThread
from personalization.v1 import events_pb2
from serving.codec import event_to_wire

log = logging.getLogger(__name__)

DLQ_SOURCE = "grpc"


class CollectUnavailable(RuntimeError):
    """Kafka did not acknowledge the batch in time (the servicer answers UNAVAILABLE)."""


@dataclass(frozen=True, slots=True)
class CollectResult:
    accepted: int
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


@dataclass(frozen=True, slots=True)
class Triage:
    valid: list[tuple[int, Event]]
    invalid: list[tuple[int, Rejection, str]]  # (index, why, raw JSON)


def triage(events: Sequence[events_pb2.Event], now_ms: int, limits: ValidationLimits) -> Triage:
    """Split a batch into valid, normalized events and rejections (pure)."""
    valid: list[tuple[int, Event]] = []
    invalid: list[tuple[int, Rejection, str]] = []
    for index, proto in enumerate(events):
        raw = json.dumps(event_to_wire(proto), separators=(",", ":"), sort_keys=True)
        # parse_event is the job's own entry point: same size limit, same rules.
        outcome = parse_event(raw, now_ms=now_ms, limits=limits)
        if isinstance(outcome, Rejection):
            invalid.append((index, outcome, raw))
        else:
            valid.append((index, outcome))
    return Triage(valid, invalid)


class _PendingBatch:
    """Counts the delivery reports of one batch."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._pending = size
        self.errors: list[str] = []
        self.done = threading.Event()
        if size == 0:
            self.done.set()

    @property
    def pending(self) -> int:
        return self._pending

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self.errors.append(f"{msg.topic() if msg is not None else '?'}: {err}")
            self._pending -= 1
            if self._pending <= 0:
                self.done.set()


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.serving.collect_linger_ms,
        "client.id": "pz-serving-collector",
    }


class EventCollector:
    def __init__(
        self,
        settings: Settings,
        producer: Producer | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
        on_kafka_state: Callable[[bool], None] | None = None,
    ) -> None:
        kafka = settings.kafka
        self._topics = {
            "clickstream": kafka.clickstream_topic,
            "purchase": kafka.purchase_topic,
            "engagement": kafka.engagement_topic,
        }
        self._dlq_topic = kafka.dlq_topic
        self._ack_timeout_s = settings.serving.collect_ack_timeout_s
        self._limits = ValidationLimits.from_settings(settings.features)
        self._now_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._on_kafka_state = on_kafka_state
        if producer is None:
            config = producer_config(settings)
            config["error_cb"] = self._on_error
            producer = Producer(config)
        self._producer = producer
        self._stop = threading.Event()
        self._poller = NamedThread(target=self._poll, name="collector-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka producer: %s", err)
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self._on_kafka_state:
            self._on_kafka_state(False)

    def collect(self, events: Sequence[events_pb2.Event]) -> CollectResult:
        """Produce a batch; returns once Kafka acknowledged every record of it.

        Raises :class:`CollectUnavailable` when Kafka does not acknowledge in time.
        """
        now_ms = self._now_ms()
        split = triage(events, now_ms, self._limits)
        batch = _PendingBatch(len(split.valid) + len(split.invalid))
        try:
            for _, event in split.valid:
                self._producer.produce(
                    self._topics[topic_family(event.event_type)],
                    key=event.user_id.encode(),
                    value=event.to_json().encode(),
                    on_delivery=batch.on_delivery,
                )
            for _, rejection, raw in split.invalid:
                # An event over the size limit keeps only its first max_event_bytes in
                # the DLQ (the detail gives the full size): whole, a request-sized event
                # would exceed Kafka's record limit and fail the batch.
                kept = raw[: self._limits.max_event_bytes]
                self._producer.produce(
                    self._dlq_topic,
                    value=dead_letter(kept, rejection, source=DLQ_SOURCE, now_ms=now_ms).encode(),
                    on_delivery=batch.on_delivery,
                )
        except BufferError as exc:
            raise CollectUnavailable(f"producer queue full: {exc}") from exc
        if not batch.done.wait(self._ack_timeout_s):
            raise CollectUnavailable(
                f"Kafka acknowledged {len(events) - batch.pending} of {len(events)} records"
                f" within {self._ack_timeout_s}s"
            )
        if batch.errors:
            raise CollectUnavailable(f"Kafka refused records: {batch.errors[0]}")
        if self._on_kafka_state:
            self._on_kafka_state(True)
        return CollectResult(
            accepted=len(split.valid),
            rejected=[(index, rejection.reason) for index, rejection, _ in split.invalid],
        )

    def produce_acked(self, records: Sequence[tuple[str, str | None, str]]) -> None:
        """Produce ``(topic, key, value)`` records; returns once Kafka acknowledged all
        (the Catalog RPCs). Raises :class:`CollectUnavailable` as :meth:`collect` does."""
        batch = _PendingBatch(len(records))
        try:
            for topic, key, value in records:
                self._producer.produce(
                    topic,
                    key=key.encode() if key is not None else None,
                    value=value.encode(),
                    on_delivery=batch.on_delivery,
                )
        except BufferError as exc:
            raise CollectUnavailable(f"producer queue full: {exc}") from exc
        if not batch.done.wait(self._ack_timeout_s):
            raise CollectUnavailable(
                f"Kafka acknowledged {len(records) - batch.pending} of {len(records)} records"
                f" within {self._ack_timeout_s}s"
            )
        if batch.errors:
            raise CollectUnavailable(f"Kafka refused records: {batch.errors[0]}")

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        """Fire-and-forget produce (exposure records): never blocks a request; a full
        local queue drops the record and says so."""
        try:
            self._producer.produce(topic, key=key.encode(), value=value)
            return True
        except BufferError:
            log.warning("producer queue full: dropped a record for %s", topic)
            return False

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._poller.join(timeout_s)
        self._producer.flush(timeout_s)
