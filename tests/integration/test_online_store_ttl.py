"""Retention in Redis: every online-store write sets ``privacy.retention_days`` as the
TTL of the entity's hash, and every later write sets it again; tombstones keep their own
TTL; the model registry and the item index never expire. On one node and on the local
3-master cluster (the session's real redis-server processes)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from feature_repo.names import ITEM_STATS, USER_CF, USER_PROFILE
from personalization import feature_store as fs
from personalization.feature_updates import FeatureUpdate, model_version_update
from personalization.model_versions import ModelVersion
from personalization.online_store import OnlineStoreWriter
from personalization.settings import Settings

pytestmark = pytest.mark.integration

DAYS = 2
RETENTION_S = DAYS * 24 * 3600


@pytest.fixture(params=["single", "cluster"])
def writer(request: pytest.FixtureRequest) -> Iterator[OnlineStoreWriter]:
    base: Settings = request.getfixturevalue(
        "redis_server" if request.param == "single" else "redis_cluster"
    )
    settings = base.model_copy(
        update={"privacy": base.privacy.model_copy(update={"retention_days": DAYS})}
    )
    store = OnlineStoreWriter(settings)
    try:
        yield store
    finally:
        store.redis.close()


def _ttl(store: OnlineStoreWriter, view: str, entity: str) -> int:
    ttl: int = store.redis.ttl(fs.redis_key(store.project, view, entity))  # type: ignore[assignment]
    return ttl


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def test_every_write_sets_and_refreshes_the_ttl(writer: OnlineStoreWriter) -> None:
    user = f"ttl-user-{time.time_ns()}"
    t0 = _now_us()
    writer.write([FeatureUpdate(USER_PROFILE, user, t0, {"events_total": 1})])
    assert RETENTION_S - 60 <= _ttl(writer, USER_PROFILE, user) <= RETENTION_S

    # Time passes (the TTL runs down); the next write of the same hash starts it again.
    key = fs.redis_key(writer.project, USER_PROFILE, user)
    writer.redis.expire(key, 100)
    assert _ttl(writer, USER_PROFILE, user) <= 100
    writer.write([FeatureUpdate(USER_PROFILE, user, t0 + 1_000, {"events_total": 2})])
    assert RETENTION_S - 60 <= _ttl(writer, USER_PROFILE, user) <= RETENTION_S

    # The user's other view lives in the same hash and refreshes it too.
    writer.redis.expire(key, 100)
    writer.write([FeatureUpdate(USER_CF, user, t0 + 2_000, {"cf_vector": [0.5, 0.25]})])
    assert RETENTION_S - 60 <= _ttl(writer, USER_PROFILE, user) <= RETENTION_S

    # A replayed older row is skipped by Feast's version check: no write, no refresh.
    writer.redis.expire(key, 100)
    writer.write([FeatureUpdate(USER_PROFILE, user, t0 - 1_000, {"events_total": 9})])
    assert _ttl(writer, USER_PROFILE, user) <= 100


def test_a_batch_sets_the_ttl_of_every_entity(writer: OnlineStoreWriter) -> None:
    stamp = time.time_ns()
    users = [f"ttl-batch-{stamp}-{i}" for i in range(50)]
    items = [f"ttl-item-{stamp}-{i}" for i in range(20)]
    now_us = _now_us()
    rows = [FeatureUpdate(USER_PROFILE, u, now_us, {"events_total": 1}) for u in users]
    rows += [
        FeatureUpdate(ITEM_STATS, i, now_us, {"category": "books", "last_event_ms": now_us // 1000})
        for i in items
    ]
    index = fs.item_index_key(writer.project)
    try:
        assert writer.write(rows) == len(rows)
        ttls = [_ttl(writer, USER_PROFILE, u) for u in users]
        ttls += [_ttl(writer, ITEM_STATS, i) for i in items]
        assert all(RETENTION_S - 60 <= t <= RETENTION_S for t in ttls), sorted(set(ttls))
        # The item index is one sorted set for the catalog: it never expires.
        assert writer.redis.ttl(index) == -1
    finally:
        # The store is the session's: leave no items for other tests' catalogs (the
        # Redis Cluster test counts what its catalog refresh finds).
        writer.redis.zrem(index, *items)
        for key in [fs.redis_key(writer.project, ITEM_STATS, i) for i in items] + [
            fs.redis_key(writer.project, USER_PROFILE, u) for u in users
        ]:
            writer.redis.delete(key)


def test_tombstones_keep_their_ttl_and_models_never_expire(writer: OnlineStoreWriter) -> None:
    user = f"ttl-erased-{time.time_ns()}"
    t0 = _now_us()
    writer.write([FeatureUpdate(USER_PROFILE, user, t0, {"events_total": 3})])
    writer.write([FeatureUpdate(USER_PROFILE, user, t0 + 1_000, {}, erase=True)])
    tombstone_ttl = writer.settings.privacy.erasure_tombstone_ttl_s
    assert tombstone_ttl != RETENTION_S
    assert tombstone_ttl - 60 <= _ttl(writer, USER_PROFILE, user) <= tombstone_ttl

    model = f"ttl-model-{time.time_ns()}"
    version = ModelVersion(model, "v1", t0 // 1000, 10, {}, {"w": 1.0})
    writer.write([model_version_update(version)])
    assert writer.registry.active_version(model) == version
    keys = [k for k in writer.redis.scan_iter(match=f"*{model}*", count=1000)]
    assert len(keys) >= 2, keys
    assert all(writer.redis.ttl(k) == -1 for k in keys), keys


def test_no_ttl_when_retention_is_off(redis_server: Settings) -> None:
    settings = redis_server.model_copy(
        update={"privacy": redis_server.privacy.model_copy(update={"retention_days": 0})}
    )
    store = OnlineStoreWriter(settings)
    try:
        user = f"ttl-off-{time.time_ns()}"
        store.write([FeatureUpdate(USER_PROFILE, user, _now_us(), {"events_total": 1})])
        assert _ttl(store, USER_PROFILE, user) == -1
    finally:
        store.redis.close()
