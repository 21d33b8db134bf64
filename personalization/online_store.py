"""Applying feature updates to Feast's Redis online store (the write side of the glue).

The writer process (``writer/``) applies the job's changelog through this, and
``Admin.ForgetUser`` (``serving/admin.py``) erases through it, so both write the same
layout: Feast's (one hash per entity, rows not newer than the stored ones skipped, which
makes replays harmless; rows are encoded here, erasure tombstones go through Feast's
``RedisOnlineStore.online_write_batch``), the
``{project}:item_index`` sorted set that serving's catalog refresh reads, model versions
to the model registry, and erasure tombstones.

Every entity hash written carries a TTL of ``privacy.retention_days``, set again by each
write (``feature_store.key_ttl_s``: an EXPIRE in the write's pipeline, as Feast does), so a
user or item nobody wrote for that long disappears from Redis; a tombstone's TTL is
``privacy.erasure_tombstone_ttl_s``. The model registry and the item index are written
with plain commands and never expire.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import cast

from feast.infra.online_stores.redis import RedisOnlineStore

from feature_repo.names import ENTITY_OF_VIEW, ITEM_STATS
from personalization import feature_store as fs
from personalization import metrics
from personalization.feast_redis_encoding import encode_fields, timestamp_bytes
from personalization.feature_updates import FeatureUpdate, coalesce, is_model_version
from personalization.model_registry import ModelRegistry
from personalization.model_versions import ModelVersion
from personalization.redis_client import redis_client
from personalization.settings import Settings

__all__ = ["OnlineStoreWriter"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=1 << 16)
def _redis_key(project: str, view: str, entity_id: str) -> bytes:
    # Feast's key bytes (a serialized EntityKey message, then the project): built once
    # per recently written entity rather than once per row.
    return fs.redis_key(project, view, entity_id)


class OnlineStoreWriter:
    """Writes coalesced feature updates through Feast's Redis online store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = fs.repo_config(settings)
        self.store = RedisOnlineStore()
        self.redis = redis_client(settings.redis, request_path=False)
        self.project = settings.feast.project
        self.key_ttl_s = fs.key_ttl_s(settings)
        self.registry = ModelRegistry(
            self.redis, self.project, keep=settings.learning.registry_keep_versions
        )

    def write(self, updates: list[FeatureUpdate]) -> int:
        rows = coalesce(updates)
        versions = [row for row in rows if is_model_version(row)]
        if versions:
            rows = [row for row in rows if not is_model_version(row)]
            for row in versions:
                version = ModelVersion.from_json(json.dumps(row.features))
                if self.registry.publish(version):
                    log.info("model %s: version %s is active", version.model, version.version)
        erasures = [row for row in rows if row.erase]
        if erasures:
            self.erase(erasures)
        live = [row for row in rows if not row.erase]
        if live:
            self._write_rows(live)
        return len(rows)

    def _write_rows(self, rows: list[FeatureUpdate]) -> None:
        """Write coalesced rows in Feast's layout and with its rule: a row whose stored
        timestamp (``_ts:<view>``) is not older is skipped, so replays are harmless.

        Feast's ``online_write_batch`` does the same per view (a pipeline of HMGETs, then
        one of HSETs and EXPIREs, with a protobuf message per feature); here one batch
        of every view takes those two pipelines in all, an entity's views (a user's
        profile and CF rows share its hash) one HMGET and one HSET, and the values go
        straight to bytes (``feast_redis_encoding``). The stored bytes are Feast's: the
        layout test compares whole hashes with what ``online_write_batch`` writes."""
        by_key: dict[bytes, list[FeatureUpdate]] = {}
        for row in rows:
            by_key.setdefault(_redis_key(self.project, row.view, row.entity_id), []).append(row)
        with self.redis.pipeline(transaction=False) as pipe:
            for key, key_rows in by_key.items():
                pipe.hmget(key, [fs.ts_field(row.view) for row in key_rows])  # type: ignore[arg-type]
            stored = pipe.execute()
        ttl = self.key_ttl_s
        with self.redis.pipeline(transaction=False) as pipe:
            for (key, key_rows), stamps in zip(by_key.items(), stored, strict=True):
                mapping: dict[bytes, bytes] = {}
                # Newest version per view: the stored one, then rows queued in this batch
                # (``coalesce`` leaves one per view and entity; a caller that did not
                # still gets Feast's order-free outcome).
                newest: dict[str, int] = {}
                for row, stamp in zip(key_rows, stamps, strict=True):
                    seen = newest.get(row.view)
                    if seen is None:
                        seen = fs.timestamp_us(stamp) if stamp is not None else 0
                    if seen and seen >= row.version_us:
                        continue  # the stored row is as new or newer (a replay)
                    newest[row.view] = row.version_us
                    mapping[fs.ts_field(row.view)] = timestamp_bytes(row.version_us)
                    mapping.update(encode_fields(row.view, row.features))
                if mapping:
                    pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                    if ttl:
                        pipe.expire(key, ttl)
            items = {
                row.entity_id: int(row.features.get("last_event_ms", 0))
                for row in rows
                if row.view == ITEM_STATS
            }
            if items:
                pipe.zadd(fs.item_index_key(self.project), items)  # type: ignore[arg-type]
            pipe.execute()
        m = metrics.writer_metrics()
        written_s = time.time()
        by_view: dict[str, list[FeatureUpdate]] = {}
        for row in rows:
            by_view.setdefault(row.view, []).append(row)
        for view, view_rows in by_view.items():
            m.rows_written.labels(view).inc(len(view_rows))
            freshness = m.freshness.labels(view)
            for row in view_rows:
                freshness.observe(written_s - row.version_us / 1_000_000)

    def erase(self, erasures: list[FeatureUpdate]) -> None:
        """Replace each entity's data by a tombstone: only ``consent=erased`` and the
        erasure's timestamp, so Feast skips any older row replayed later. The tombstone
        expires after ``privacy.erasure_tombstone_ttl_s`` (longer than replays can reach)."""
        ttl = self.settings.privacy.erasure_tombstone_ttl_s
        for row in erasures:
            key = fs.redis_key(self.project, row.view, row.entity_id)
            stored = cast(
                "bytes | None",
                self.redis.hget(key, fs.ts_field(row.view)),  # type: ignore[arg-type]
            )
            if stored is not None and fs.timestamp_us(stored) >= row.version_us:
                continue  # a newer write (or tombstone) is already there
            self.redis.delete(key)
            stamp = datetime.fromtimestamp(row.version_us / 1_000_000, tz=UTC)
            # Every view of the entity gets the erasure's timestamp (one hash holds them
            # all): an older row of any of them replayed later is skipped by Feast.
            entity = ENTITY_OF_VIEW[row.view]
            for view in [v for v, e in ENTITY_OF_VIEW.items() if e == entity]:
                values = {"consent": "erased"} if view == row.view else {}
                tombstone = (
                    fs.entity_key(view, row.entity_id),
                    fs.encode_row(view, values),
                    stamp,
                    None,
                )
                self.store.online_write_batch(self.config, fs.feature_view(view), [tombstone], None)
            self.redis.expire(key, ttl)
