"""How item CF factors travel from the item operator back to the user operator.

The online MF is partitioned (``flink_jobs/learning.py``): each item operator learns its
items' factors, and the user operator needs them to learn users'. A Flink job cannot
loop a stream back to an earlier operator, so the item operator writes each item's new
factors to the ``item_factors`` Kafka topic (``settings.kafka.item_factors_topic``) and the
job reads that topic again, broadcast to every user subtask. There they update the
``KnownItems`` cache, and every so often (``STORE_EVERY_MS`` per item) the broadcast
state, which checkpoints with the job: a restore starts the user side from factors at
most that much older than the checkpoint's, and the feed's offsets restore with it, so
what the item operators publish after the checkpoint arrives again. The user side is a
few records behind the item side while running (the loop through Kafka); the model
tolerates that, as asynchronous SGD does.

A record is JSON ``{"i": item_id, "v": version_us, "f": base64(float32 factors)}``;
its Kafka timestamp is the item event's time, which gives the feed its watermarks.

An item publishes at most once per ``learning.item_factor_feed_every_ms`` of processing
time (:class:`FeedThrottle`): a record costs more on its way round (the Kafka sink, the
broker, the feed source, then decoding in *every* user subtask) than the SGD step that
made it, and in a replay or on a hot item most records are superseded within
milliseconds (the MovieLens replay at 2,000-5,000 events/s: 0.3 records per event at
100 ms instead of 1). The first change after a quiet interval goes at once; later ones
wait for the next change after the interval, or for the item's row timer
(``features.item_rows_every_ms``), which releases the newest factors held back. A
released record carries the event time of the change it publishes (the operator yields
``(record, event_time_ms)`` and the job stamps it in the JVM), never the timer's clock: a
feed stamped with the wall clock moves the user operator's watermark past the events
when their source idles.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import orjson

__all__ = ["STORE_EVERY_MS", "FeedThrottle", "decode", "encode", "from_bytes", "to_bytes"]

# The user operator writes an item's factors into broadcast state at most this often
# (event time): each write is a call into the JVM, and a hot item publishes on every
# event. A restore then starts from factors at most this much older than the feed.
STORE_EVERY_MS = 1_000


def to_bytes(factors: np.ndarray) -> bytes:
    """Factors as kept in keyed state: float32, native order (the job's own machines)."""
    return np.asarray(factors, dtype=np.float32).tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    """A writable float32 vector from :func:`to_bytes`'s bytes."""
    return np.frombuffer(raw, dtype=np.float32).copy()


def encode(item_id: str, version_us: int, factors: bytes) -> str:
    return orjson.dumps(
        {"i": item_id, "v": version_us, "f": base64.b64encode(factors).decode("ascii")}
    ).decode()


def decode(record: str | bytes) -> tuple[str, int, np.ndarray] | None:
    """``(item_id, version_us, factors)``, or None for a record that is not one (a
    foreign producer on the topic must not stop the job)."""
    try:
        obj = orjson.loads(record)
        item, version = obj["i"], obj["v"]
        factors = from_bytes(base64.b64decode(obj["f"], validate=True))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
        return None
    if not isinstance(item, str) or not isinstance(version, int) or not item:
        return None
    if not np.isfinite(factors).all():
        return None
    return item, version, factors


@dataclass(slots=True)
class FeedThrottle:
    """Which item-factor changes go to the feed now (pure; the item operator's).

    Not checkpointed: a restore starts with nothing held, and the item's restored row
    timer publishes the factors the state holds (the operator's ``on_timer``).
    """

    every_ms: int
    # item -> processing time of its last record, for the items published within
    # every_ms (oldest first: pruned from the front as time moves on).
    sent: OrderedDict[str, int] = field(default_factory=OrderedDict)
    # item -> event time of its newest change not yet published.
    held: dict[str, int] = field(default_factory=dict)

    def offer(self, item_id: str, now_ms: int, event_time_ms: int) -> bool:
        """The item's factors changed (an event at ``event_time_ms``, processed at
        ``now_ms``): True to publish them now; False holds them back."""
        sent = self.sent
        cutoff = now_ms - self.every_ms
        while sent:
            oldest = next(iter(sent))
            if sent[oldest] > cutoff:
                break
            del sent[oldest]
        if item_id in sent:
            held = self.held.get(item_id)
            self.held[item_id] = event_time_ms if held is None else max(held, event_time_ms)
            return False
        sent[item_id] = now_ms
        self.held.pop(item_id, None)
        return True

    def release(self, item_id: str, now_ms: int) -> int | None:
        """The item's row timer fired: the event time to publish its held factors with,
        or None when nothing is held."""
        event_time_ms = self.held.pop(item_id, None)
        if event_time_ms is not None:
            self.sent[item_id] = now_ms
            self.sent.move_to_end(item_id)
        return event_time_ms
