"""The catalog consumer: ``catalog`` topic records -> the ``item_catalog`` view in Redis.

Runs in the writer process beside the feature-update loop (``writer/process.py`` starts
it in a thread). Each record is validated by ``personalization/catalog_records.py``;
a refused one goes to the dead-letter topic with its reason (source ``catalog``), the
rest are written through Feast's online store like the job's rows (the newest
``updated_at`` per item wins, so replays and a delete's tombstone are safe), and their
ids are scored with the write time in ``{project}:catalog_index`` for serving's
incremental catalog refresh. Offsets are committed only after the write and the dead
letters were acknowledged: a crash in between re-applies the batch, which changes
nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from feature_repo.names import ITEM_CATALOG
from personalization.catalog_records import CatalogItem, parse_catalog_record
from personalization.events import dead_letter
from personalization.feature_store import catalog_index_key
from personalization.feature_updates import FeatureUpdate
from personalization.group_consumer import GroupConsumer
from personalization.online_store import OnlineStoreWriter
from personalization.redis_client import REDIS_ERRORS
from personalization.settings import Settings

__all__ = ["DLQ_SOURCE", "CatalogBatch", "CatalogStats", "run_catalog_consumer", "split_batch"]

log = logging.getLogger(__name__)

DLQ_SOURCE = "catalog"
WRITE_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)


@dataclass
class CatalogStats:
    batches: int = 0
    items_written: int = 0
    deletes: int = 0
    rejected: int = 0
    write_errors: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CatalogBatch:
    items: list[CatalogItem]
    dead_letters: list[str]  # DLQ records (JSON)
    reasons: list[str]


def split_batch(messages: list[Message], max_future_skew_ms: int) -> CatalogBatch:
    """Valid items and dead letters of one poll (pure apart from reading the messages).

    A record without ``updated_at`` is versioned with its Kafka timestamp (the time it
    was produced), so replaying the topic reproduces the same versions."""
    items: list[CatalogItem] = []
    letters: list[str] = []
    reasons: list[str] = []
    now_ms = int(time.time() * 1000)
    for msg in messages:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error: %s", error)
            continue
        raw = msg.value() or b""
        _kind, stamp = msg.timestamp()
        produced_ms = stamp if stamp and stamp > 0 else now_ms
        outcome = parse_catalog_record(
            raw, now_ms=produced_ms, max_future_skew_ms=max_future_skew_ms
        )
        if isinstance(outcome, CatalogItem):
            items.append(outcome)
        else:
            letters.append(dead_letter(raw, outcome, source=DLQ_SOURCE, now_ms=now_ms))
            reasons.append(outcome.reason)
    return CatalogBatch(items, letters, reasons)


def _updates(items: list[CatalogItem]) -> list[FeatureUpdate]:
    return [
        FeatureUpdate(ITEM_CATALOG, item.item_id, item.updated_ms * 1000, item.feature_row())
        for item in items
    ]


def run_catalog_consumer(
    settings: Settings, stop: threading.Event | None = None, *, ready: threading.Event | None = None
) -> CatalogStats:
    """Apply catalog records until ``stop`` is set."""
    stop = stop or threading.Event()
    cfg = settings.catalog
    stats = CatalogStats()
    writer = OnlineStoreWriter(settings)
    index_key = catalog_index_key(settings.feast.project)
    consumer = GroupConsumer(
        settings.kafka,
        cfg.consumer_group,
        [settings.kafka.catalog_topic],
        name="catalog consumer",
        options={"fetch.wait.max.ms": 50, "session.timeout.ms": 10000},
    )
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "client.id": "pz-catalog-writer",
        }
    )
    skew_ms = settings.features.max_future_skew_s * 1000
    if ready is not None:
        ready.set()
    backoff = 0.05
    try:
        while not stop.is_set():
            messages = consumer.consume(num_messages=cfg.batch_size, timeout=cfg.poll_timeout_s)
            if not messages:
                continue
            batch = split_batch(messages, skew_ms)
            for letter in batch.dead_letters:
                producer.produce(settings.kafka.dlq_topic, value=letter.encode())
            while not stop.is_set():
                try:
                    if batch.items:
                        writer.write(_updates(batch.items))
                        written_ms = int(time.time() * 1000)
                        writer.redis.zadd(index_key, {i.item_id: written_ms for i in batch.items})
                    break
                except WRITE_ERRORS as exc:
                    stats.write_errors += 1
                    log.warning("catalog write failed (%s); retrying in %.2fs", exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
            else:
                break  # stopping with an unwritten batch: do not commit it
            backoff = 0.05
            # Dead letters are part of the batch: commit only once Kafka has them.
            while producer.flush(cfg.ack_timeout_s) > 0 and not stop.is_set():
                log.warning("dead letters not acknowledged yet; waiting")
            if stop.is_set():
                break
            try:
                consumer.commit()
            except KafkaException as exc:
                log.warning("catalog offset commit failed (%s); the batch may repeat", exc)
            stats.batches += 1
            stats.items_written += len(batch.items)
            stats.deletes += sum(1 for i in batch.items if i.deleted)
            stats.rejected += len(batch.reasons)
            for reason in batch.reasons:
                stats.rejected_by_reason[reason] = stats.rejected_by_reason.get(reason, 0) + 1
    finally:
        consumer.close()
        producer.flush(1.0)
    return stats
