"""Online-store writer process: applies the job's feature updates to Feast's Redis store.

Consumes ``feature_updates``, keeps the newest row per entity within a batch, writes
them in Feast's Redis layout and by its rule (rows not newer than the stored ones are
skipped, so replays are harmless; ``personalization/online_store.py``) and commits Kafka
offsets only after the write succeeded. If Redis is down it retries the same batch with
backoff and commits nothing, so no update is lost; once Redis is back it catches up.

It also maintains ``{project}:item_index``, a sorted set of item ids scored by the
time of their latest row, which serving uses to refresh its in-process catalog
incrementally. Model versions on the same changelog (``model:<name>`` rows) go to the
model registry (``personalization/model_registry.py``). The writes themselves are
``personalization/online_store.py``; this module is the Kafka consumer loop around them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from personalization import metrics
from personalization.feature_updates import FeatureUpdate, decode_record
from personalization.group_consumer import GroupConsumer
from personalization.heap import observe_collections, settle_heap
from personalization.online_store import OnlineStoreWriter
from personalization.redis_client import REDIS_ERRORS
from personalization.settings import Settings
from writer.history import HistoryBuffer

# A failed write to the online store (single node or cluster): retried with backoff.
WRITE_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)

__all__ = [
    "HistoryFlusher",
    "WriterStats",
    "decode_batch",
    "main",
    "run_writer",
    "update_consumer_lag",
]

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    batches: int = 0
    rows_in: int = 0
    rows_written: int = 0
    bad_records: int = 0
    write_errors: int = 0
    last_write_ms: int = 0
    by_view: dict[str, int] = field(default_factory=dict)


def decode_batch(messages: list[Message], stats: WriterStats) -> list[FeatureUpdate]:
    updates = []
    for msg in messages:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error: %s", error)
            continue
        try:
            updates.extend(decode_record(msg.value() or b""))
        except (ValueError, KeyError, TypeError):
            # Only the job writes this topic; a bad record is a bug, not data to retry.
            stats.bad_records += 1
            metrics.writer_metrics().bad_records.inc()
            log.error("undecodable feature update at offset %s", msg.offset())
    return updates


def run_writer(
    settings: Settings,
    stop: threading.Event | None = None,
    *,
    batch_size: int = 2000,
    poll_timeout_s: float = 0.02,
    on_batch: Callable[[WriterStats], None] | None = None,
    settle: bool = False,
) -> WriterStats:
    """Consume and apply feature updates until ``stop`` is set. ``settle``: the process
    is the writer's own (``python -m writer``), so once set up its heap is taken out of
    the garbage collector's way (``personalization/heap.py``; 30 % of the writer's CPU
    per row); a caller sharing its process leaves the collector alone."""
    stop = stop or threading.Event()
    stats = WriterStats()
    writer = OnlineStoreWriter(settings)
    consumer = GroupConsumer(
        settings.kafka,
        settings.kafka.writer_consumer_group,
        [settings.kafka.feature_updates_topic],
        name="online-store writer",
        options={"fetch.wait.max.ms": 10, "session.timeout.ms": 10000},
    )
    # Feature history (Feast's offline store): offsets are committed after its flush.
    flusher = (
        HistoryFlusher(HistoryBuffer(settings.history_path, settings.history), consumer, stop)
        if settings.history.enabled
        else None
    )
    m = metrics.writer_metrics()
    if settle:
        settle_heap()  # Feast, pyarrow and the clients are loaded by now
        observe_collections()
    next_lag_update = 0.0
    backoff = 0.05
    try:
        while not stop.is_set():
            if time.monotonic() >= next_lag_update:
                next_lag_update = time.monotonic() + 1.0
                update_consumer_lag(consumer, m)
            messages = consumer.consume(num_messages=batch_size, timeout=poll_timeout_s)
            if flusher is not None:
                flusher.poll()
            if not messages:
                if flusher is not None:
                    flusher.flush_if_due()
                continue
            updates = decode_batch(messages, stats)
            while not stop.is_set():
                try:
                    with m.batch_seconds.time():
                        written = writer.write(updates)
                    break
                except WRITE_ERRORS as exc:
                    stats.write_errors += 1
                    m.write_errors.inc()
                    log.warning("online store write failed (%s); retrying in %.2fs", exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
            else:
                break  # stopping with an unwritten batch: do not commit it
            backoff = 0.05
            if flusher is None:
                _commit(consumer)
            else:
                flusher.add(updates)
            stats.batches += 1
            stats.rows_in += len(updates)
            stats.rows_written += written
            stats.last_write_ms = int(time.time() * 1000)
            m.batches.inc()
            m.last_write.set(stats.last_write_ms / 1000)
            if on_batch:
                on_batch(stats)
        else:
            # Stopped between batches: what was applied goes to the history, then commit.
            if flusher is not None:
                flusher.flush_final()
    finally:
        if flusher is not None:
            flusher.close()  # an in-flight flush ends (and commits) first
        consumer.close()
    return stats


def _commit(consumer: GroupConsumer, offsets: list[TopicPartition] | None = None) -> None:
    try:
        consumer.commit(offsets)
    except KafkaException as exc:
        # E.g. the group rebalanced while the broker restarted: the batch is in Redis
        # (and the history) already and will be redelivered; Redis skips it.
        log.warning("offset commit failed (%s); the batch may be applied twice", exc)


class HistoryFlusher:
    """Feature-history flushes off the consuming thread, one at a time.

    A flush (the last rows' Arrow conversion, then zstd-compressed parquet files per view
    and day) took the consuming loop away from Redis for long enough to show in the
    freshness of every row behind it: at 2,000 events/s, p99 615-724 ms with the history
    on against 432 ms with it off (``bench freshness``). Now the buffered rows are handed
    to one background thread (``HistoryBuffer.detach``) with the offsets consumed so far,
    every one of them applied to Redis and in those rows; the loop goes on, and commits
    those offsets when the flush is written. Parquet's encoding and compression run
    without the GIL. A failed write is retried with backoff until ``stop``, holding the
    next flush (and so every commit) back; nothing is committed past rows not yet in the
    history, so a crash loses none of them (they come again; Redis skips them).
    """

    def __init__(
        self, history: HistoryBuffer, consumer: GroupConsumer, stop: threading.Event
    ) -> None:
        self._history = history
        self._consumer = consumer
        self._stop = stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-flush")
        self._inflight: tuple[Future[bool], list[TopicPartition], HistoryBuffer] | None = None
        # Rows of a flush that was not written (stopped while retrying): flushed again,
        # with what came since, before anything past them is committed.
        self._unwritten: HistoryBuffer | None = None

    def add(self, updates: list[FeatureUpdate]) -> None:
        """A batch applied to Redis: buffered, and a flush started when one is due."""
        self._history.add(updates)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Call only with every consumed batch applied and added: the flush commits what
        was consumed until now."""
        if self._history.due():
            self._start()

    def flush_final(self) -> None:
        """The writer is stopping between batches: what is buffered, one attempt, waited
        for."""
        self._start(final=True)

    def _start(self, *, final: bool = False) -> None:
        """Flush what is buffered, then commit what was consumed until now. The previous
        flush is finished (and committed) first, so commits stay in order."""
        self.finish()
        taken = self._history.detach()
        if self._unwritten is not None:
            self._unwritten.absorb(taken)
            taken, self._unwritten = self._unwritten, None
        positions = [
            tp for tp in self._consumer.position(self._consumer.assignment()) if tp.offset >= 0
        ]
        stop = None if final else self._stop
        self._inflight = (self._pool.submit(_flush_retrying, taken, stop), positions, taken)
        if final:
            self.finish()

    def poll(self) -> None:
        """Commit after a flush that has been written."""
        if self._inflight is not None and self._inflight[0].done():
            self.finish()

    def finish(self) -> None:
        """Wait for the flush in flight, and commit its offsets if it was written."""
        if self._inflight is None:
            return
        future, positions, taken = self._inflight
        self._inflight = None
        if not future.result():
            self._unwritten = taken  # nothing past these rows is committed
        elif positions:
            _commit(self._consumer, positions)

    def close(self) -> None:
        self.finish()
        self._pool.shutdown(wait=True)


def _flush_retrying(history: HistoryBuffer, stop: threading.Event | None) -> bool:
    """Append the rows to the feature history; True once written. A failed write (disk
    full, ...) is retried with backoff until ``stop`` (once when None): False then, and
    the rows stay uncommitted, so they come again."""
    backoff = 0.05
    m = metrics.writer_metrics()
    while True:
        try:
            history.flush()
            return True
        except OSError as exc:
            m.write_errors.inc()
            log.warning("feature history write failed (%s); retrying in %.2fs", exc, backoff)
            if stop is None or stop.wait(backoff):
                return False
            backoff = min(backoff * 2, 2.0)


def update_consumer_lag(consumer: GroupConsumer, m: metrics.WriterMetrics) -> None:
    """Messages behind the end of each assigned partition, from the consumer's position
    and the high watermark librdkafka cached from the last fetch (no broker round trip)."""
    try:
        assigned = consumer.assignment()
        if not assigned:
            return
        for tp in consumer.position(assigned):
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                m.consumer_lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
    except Exception as exc:  # metrics never stop the writer
        log.debug("consumer lag not available: %s", exc)


def main() -> None:
    from personalization.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = load_settings()
    metrics.start_metrics_server(
        settings.metrics.host, settings.metrics.writer_port, what="writer metrics"
    )
    # The catalog topic has its own consumer (writer/catalog.py): a slow feature backlog
    # never delays a stock change, nor the other way round.
    from writer.catalog import run_catalog_consumer

    catalog = threading.Thread(
        target=run_catalog_consumer, args=(settings, stop), name="catalog-consumer", daemon=True
    )
    catalog.start()
    stats = run_writer(settings, stop, settle=True)
    catalog.join(timeout=10)
    log.info("writer stopped: %s", stats)


if __name__ == "__main__":
    main()
