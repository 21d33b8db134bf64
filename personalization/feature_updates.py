"""The feature-update record: what the job appends to the ``feature_updates`` topic.

One record is a full feature row of one entity (never a delta), stamped with a
version time that grows strictly per entity. Applying records in any order, any number
of times, leaves the store with the newest row: Feast's Redis store skips a write whose
timestamp is not newer than the stored one. That is what makes at-least-once delivery
(replays after a restore from checkpoint) safe.

A record may carry several rows, one per line (:func:`encode_record`).

An erasure is a row too (``erase=True``, no features): the writer removes the entity's
data and leaves a timestamped tombstone so an older row replayed later cannot bring it
back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from feature_repo.names import ENTITY_OF_VIEW
from personalization.model_versions import ModelVersion

# Rows are the job's largest output (four per rated item, ~40 features each): orjson
# encodes them ~5x faster than json.dumps. Same JSON, except that non-finite floats
# become null instead of the non-standard NaN/Infinity (rows never carry them).
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def next_version_us(time_ms: int, previous_us: int) -> int:
    """The version rule: the row's time in microseconds, but always past the previous
    version of the same entity, so versions grow strictly even when events arrive out of
    order or share a millisecond (Feast skips a row that is not newer than the stored one).

    The microsecond digits (event times are milliseconds) count the entity's updates,
    mod 1000: both branches advance them by one. That breaks the tie a restore would
    leave otherwise. A run that dies after its sink flushed a row, say for a purchase at
    t, restarts from the checkpoint and may meet the events since in another order (they
    come from several topics), e.g. a view at t - 10 first: its final row, with both
    events, would carry the same time-only version t as the dead run's row without the
    view, and Feast would keep the one applied first. With the count, the row that folded
    more events is newer (unless the count wraps between the two: 1 in 1000).
    """
    count = (previous_us + 1) % 1000
    return max(time_ms * 1000 + count, previous_us + 1)


@dataclass(frozen=True, slots=True)
class FeatureUpdate:
    view: str
    entity_id: str
    version_us: int
    features: dict[str, Any]
    erase: bool = False

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "v": self.view,
            "id": self.entity_id,
            "ts": self.version_us,
            "f": self.features,
        }
        if self.erase:
            record["op"] = "erase"
        return orjson.dumps(record, option=_ORJSON_OPTIONS).decode()

    @staticmethod
    def from_json(raw: bytes | str) -> FeatureUpdate:
        data = orjson.loads(raw)
        return FeatureUpdate(
            data["v"], data["id"], int(data["ts"]), data["f"], data.get("op") == "erase"
        )


def encode_record(rows: list[FeatureUpdate]) -> str:
    """Several rows as one changelog record, one JSON object per line.

    An operator that changes two entities with one input (the online MF: the user's and
    the item's factors) hands Flink one record instead of two: every record costs a
    Python -> JVM crossing. JSON never holds a raw newline, so lines split safely.
    """
    return "\n".join(row.to_json() for row in rows)


def decode_record(raw: bytes | str) -> list[FeatureUpdate]:
    """The rows of one changelog record (one row, or several from :func:`encode_record`)."""
    lines = raw.split(b"\n") if isinstance(raw, bytes) else raw.split("\n")
    return [FeatureUpdate.from_json(line) for line in lines if line]


# Model versions ride the same changelog as feature rows (checkpoint-flushed, replayed
# idempotently); the writer sends rows of views with this prefix to the model registry.
MODEL_VIEW_PREFIX = "model:"


def model_version_update(version: ModelVersion) -> FeatureUpdate:
    return FeatureUpdate(
        f"{MODEL_VIEW_PREFIX}{version.model}",
        version.version,
        version.created_ms * 1000,
        json.loads(version.to_json()),
    )


def is_model_version(update: FeatureUpdate) -> bool:
    return update.view.startswith(MODEL_VIEW_PREFIX)


def coalesce(updates: list[FeatureUpdate]) -> list[FeatureUpdate]:
    """Keep only the newest row per (view, entity): fewer writes, same final state.

    An erasure clears the whole entity (every view of it), so it is kept beside the
    newest rows rather than replaced by them: a consent withdrawal or an expiry erases
    and then writes the entity's new row in one record. Rows older than their entity's
    erasure go with it."""
    newest: dict[tuple[str, str], FeatureUpdate] = {}
    erased: dict[tuple[str, str], FeatureUpdate] = {}
    for update in updates:
        key = (update.view, update.entity_id)
        if update.erase:
            key = (ENTITY_OF_VIEW.get(update.view, update.view), update.entity_id)
            current = erased.get(key)
            if current is None or update.version_us > current.version_us:
                erased[key] = update
            continue
        current = newest.get(key)
        if current is None or update.version_us > current.version_us:
            newest[key] = update
    if not erased:
        return list(newest.values())
    kept = [
        row
        for row in newest.values()
        if (e := erased.get((ENTITY_OF_VIEW.get(row.view, row.view), row.entity_id))) is None
        or row.version_us > e.version_us
    ]
    return list(erased.values()) + kept
