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
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import orjson

__all__ = ["STORE_EVERY_MS", "decode", "encode", "from_bytes", "to_bytes"]

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
