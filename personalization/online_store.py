"""Applying feature updates to Feast's Redis online store (the write side of the glue).

The writer process (``writer/``) applies the job's changelog through this, and
``Admin.ForgetUser`` (``serving/admin.py``) erases through it, so both write the same
layout: Feast's ``RedisOnlineStore.online_write_batch`` (one hash per entity, rows not
newer than the stored ones skipped, which makes replays harmless), the
``{project}:item_index`` sorted set that serving's catalog refresh reads, model versions
to the model registry, and erasure tombstones.

Every entity hash written carries a TTL of ``privacy.retention_days``, set again by each
write (``feature_store.key_ttl_s``: Feast adds the EXPIRE to the write's pipeline), so a
user or item nobody wrote for that long disappears from Redis; a tombstone's TTL is
``privacy.erasure_tombstone_ttl_s``. The model registry and the item index are written
with plain commands and never expire.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import cast

from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from feature_repo.names import ENTITY_OF_VIEW, ITEM_STATS
from personalization import feature_store as fs
from personalization import metrics
from personalization.feature_updates import FeatureUpdate, coalesce, is_model_version
from personalization.model_registry import ModelRegistry
from personalization.model_versions import ModelVersion
from personalization.redis_client import redis_client
from personalization.settings import Settings

__all__ = ["OnlineStoreWriter"]

log = logging.getLogger(__name__)


class OnlineStoreWriter:
    """Writes coalesced feature updates through Feast's Redis online store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = fs.repo_config(settings)
        self.store = RedisOnlineStore()
        self.redis = redis_client(settings.redis, request_path=False)
        self.project = settings.feast.project
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
        by_view: dict[str, list[FeatureUpdate]] = {}
        for row in rows:
            if not row.erase:
                by_view.setdefault(row.view, []).append(row)
        m = metrics.writer_metrics()
        for view, view_rows in by_view.items():
            data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]] = [
                (
                    fs.entity_key(view, row.entity_id),
                    fs.encode_row(view, row.features),
                    datetime.fromtimestamp(row.version_us / 1_000_000, tz=UTC),
                    None,
                )
                for row in view_rows
            ]
            self.store.online_write_batch(self.config, fs.feature_view(view), data, None)
            m.rows_written.labels(view).inc(len(view_rows))
            written_s = time.time()
            freshness = m.freshness.labels(view)
            for row in view_rows:
                freshness.observe(written_s - row.version_us / 1_000_000)
            if view == ITEM_STATS:
                self.redis.zadd(
                    fs.item_index_key(self.project),
                    {row.entity_id: int(row.features.get("last_event_ms", 0)) for row in view_rows},
                )
        return len(rows)

    def erase(self, erasures: list[FeatureUpdate]) -> None:
        """Replace each entity's data by a tombstone: only ``consent=erased`` and the
        erasure's timestamp, so Feast skips any older row replayed later. The tombstone
        expires after ``privacy.erasure_tombstone_ttl_s`` (longer than replays can reach)."""
        ttl = self.settings.privacy.erasure_tombstone_ttl_s
        for row in erasures:
            key = fs.redis_key(self.project, row.view, row.entity_id)
            stored = cast(
                "bytes | None",
                self.redis.hget(key, f"{fs.TS_FIELD_PREFIX}{row.view}"),  # type: ignore[arg-type]
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
