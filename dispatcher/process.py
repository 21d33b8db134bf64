"""The dispatcher process: ``triggers`` -> webhooks (+ ``triggers_dlq``), and the
``Triggers`` gRPC service (``dispatcher/subscribe.py``).

Thin wiring. One batch at a time: every trigger of the batch goes to every endpoint whose
rule filter takes it (each endpoint's own pool, so its ``concurrency`` caps it); when
every delivery has settled (delivered, or dead-lettered and acknowledged by Kafka) the
batch's offsets are committed. A crash or a stop before that sends the whole batch again
on restart: at least once, and receivers deduplicate on ``X-PZ-Idempotency-Key``. The
price is head-of-line blocking: a failing endpoint holds the next batch back for up to
its retry budget (``max_attempts`` x ``timeout_s`` + backoff).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from dispatcher import dead_letters
from dispatcher.envelope import Delivered, idempotency_key
from dispatcher.identity import IdentityResolver, run_identity_directory
from dispatcher.metrics import dispatcher_metrics
from dispatcher.webhooks import Endpoint, Outcome, load_secret
from personalization import metrics as shared_metrics
from personalization.group_consumer import GroupConsumer
from personalization.settings import Settings
from personalization.triggers import Trigger, parse_trigger

__all__ = ["DispatcherStats", "build_endpoints", "main", "run_dispatcher"]

log = logging.getLogger(__name__)


@dataclass
class DispatcherStats:
    batches: int = 0
    triggers: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    invalid: int = 0


def build_endpoints(settings: Settings) -> list[Endpoint]:
    m = dispatcher_metrics()
    return [
        Endpoint(hook, load_secret(hook), on_retry=lambda name: m.retries.labels(name).inc())
        for hook in settings.dispatcher.webhooks
    ]


def _source(msg: Message) -> dict[str, object]:
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}


class _Batch:
    """The deliveries of one batch and their dead letters."""

    def __init__(self, settings: Settings, producer: Producer, stats: DispatcherStats) -> None:
        self.settings = settings
        self.producer = producer
        self.stats = stats
        self.dead_letters: list[bytes] = []
        self.m = dispatcher_metrics()

    def run(
        self,
        messages: Sequence[Message],
        endpoints: Sequence[Endpoint],
        identity: IdentityResolver,
        stop: threading.Event,
    ) -> bool:
        """Deliver the batch; True once all is settled (False: stopped half-way)."""
        now_ms = int(time.time() * 1000)
        valid: list[tuple[Message, Trigger]] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka error: %s", error)
                continue
            raw = msg.value() or b""
            trigger = parse_trigger(raw)
            if trigger is None:
                self.stats.invalid += 1
                self.m.invalid.inc()
                letter = dead_letters.invalid_record(raw, source=_source(msg), now_ms=now_ms)
                self.dead_letters.append(letter)
                continue
            valid.append((msg, trigger))
        self.stats.triggers += len(valid)
        ids = identity.resolve_many([trigger.user_id for _, trigger in valid])
        pending: list[tuple[Message, Endpoint, Delivered, Future[Outcome]]] = []
        for (msg, trigger), (user_id, kind) in zip(valid, ids, strict=True):
            delivered = Delivered(
                trigger,
                user_id,
                kind,
                idempotency_key(trigger),
                msg.partition() or 0,
                msg.offset() or 0,
            )
            for endpoint in endpoints:
                if endpoint.wants(trigger.trigger):
                    pending.append((msg, endpoint, delivered, endpoint.submit(delivered, stop)))
        settled = True
        for msg, endpoint, delivered, future in pending:
            outcome = future.result()
            if outcome.abandoned:
                settled = False
            elif outcome.delivered:
                self.stats.delivered += 1
                self.m.delivered.labels(endpoint.name).inc()
                _kind, appended_ms = msg.timestamp()
                if appended_ms > 0:
                    self.m.latency.labels(endpoint.name).observe(
                        max(0.0, time.time() - appended_ms / 1000)
                    )
            else:
                self.stats.dead_lettered += 1
                self.m.failed.labels(endpoint.name).inc()
                self.dead_letters.append(
                    dead_letters.record(
                        msg.value() or b"",
                        endpoint=endpoint.name,
                        url=endpoint.hook.url,
                        idempotency_key=delivered.key,
                        outcome=outcome,
                        source=_source(msg),
                        now_ms=int(time.time() * 1000),
                    )
                )
        return settled and self._flush_dead_letters(stop)

    def _flush_dead_letters(self, stop: threading.Event) -> bool:
        """Every dead letter acknowledged by Kafka (resent until then, or a stop)."""
        topic = self.settings.kafka.triggers_dlq_topic
        pending = list(self.dead_letters)
        backoff_s = 0.1
        refused: list[bytes] = []

        def on_delivery(err: object, msg: Message) -> None:
            if err is not None:
                refused.append(msg.value() or b"")

        while pending and not stop.is_set():
            refused.clear()
            for value in pending:
                self.producer.produce(topic, value, on_delivery=on_delivery)
            remaining = self.producer.flush(10.0)
            while remaining and not stop.is_set():
                remaining = self.producer.flush(1.0)
            if remaining:
                return False
            if refused:
                log.warning("%d dead letters refused by Kafka; resending", len(refused))
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            pending = list(refused)
        return not pending


def run_dispatcher(
    settings: Settings,
    stop: threading.Event | None = None,
    *,
    endpoints: Sequence[Endpoint] | None = None,
    identity: IdentityResolver | None = None,
) -> DispatcherStats:
    """Consume ``triggers`` and deliver them until ``stop`` is set."""
    stop = stop or threading.Event()
    d = settings.dispatcher
    stats = DispatcherStats()
    hooks = list(endpoints) if endpoints is not None else build_endpoints(settings)
    resolver = identity or IdentityResolver(settings)
    consumer = GroupConsumer(
        settings.kafka,
        d.consumer_group,
        [settings.kafka.triggers_topic],
        name="dispatcher",
        options={"fetch.wait.max.ms": 10},
    )
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    try:
        while not stop.is_set():
            messages = consumer.consume(num_messages=d.batch_size, timeout=d.poll_timeout_s)
            if not messages:
                continue
            if not _Batch(settings, producer, stats).run(messages, hooks, resolver, stop):
                break  # stopping with unsettled triggers: not committed, sent again later
            try:
                consumer.commit()
            except KafkaException as exc:
                # E.g. a rebalance: the batch is redelivered; receivers deduplicate it.
                log.warning("offset commit failed (%s): the batch may be delivered twice", exc)
            stats.batches += 1
    finally:
        consumer.close()
        if endpoints is None:
            for hook in hooks:
                hook.close()
    return stats


def main(argv: Sequence[str] | None = None) -> None:
    from dispatcher.subscribe import serve
    from personalization.settings import load_settings

    argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = load_settings()
    shared_metrics.start_metrics_server(
        settings.metrics.host, settings.dispatcher.metrics_port, what="dispatcher metrics"
    )
    server = serve(settings)
    threads = []
    if settings.dispatcher.identity_directory:
        threads.append(
            threading.Thread(
                target=run_identity_directory, args=(settings, stop), name="identity", daemon=True
            )
        )
    for thread in threads:
        thread.start()
    log.info(
        "dispatcher: %d webhook(s), Triggers on %s:%d",
        len(settings.dispatcher.webhooks),
        settings.dispatcher.host,
        settings.dispatcher.port,
    )
    try:
        stats = run_dispatcher(settings, stop)
    finally:
        server.stop(grace=2.0).wait()
        for thread in threads:
            thread.join(timeout=10.0)
    log.info("dispatcher stopped: %s", stats)
