"""The online store on a real local Redis Cluster (3 masters, ``ops/infra/redis_cluster.py``).

The writer's own code writes rows, serving's own reader and catalog read them back, Feast
(``redis_type: redis_cluster``) reads what the writer wrote, and serving keeps answering
while a master is killed and answers personalized again once it is back.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from feature_repo.names import ITEM_STATS, USER_PROFILE
from ops import stack
from ops.infra import redis_cluster as rc
from personalization import feature_store as fs
from personalization.feature_updates import FeatureUpdate
from personalization.model_registry import ModelRegistry
from personalization.model_versions import ModelVersion
from personalization.online_store import OnlineStoreWriter
from personalization.redis_client import redis_client
from personalization.settings import Settings
from serving.catalog import ItemCatalog
from serving.client import RecommenderClient
from serving.online_features import UserFeatureReader
from serving.server import ServingApp

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
USERS = [f"cluster-user-{i}" for i in range(60)]
ITEMS = [(f"{c}-{i}", c) for c in ("shoes", "books", "toys") for i in range(8)]


def user_row(i: int) -> dict[str, object]:
    return {
        "product_view_1h": i,
        "purchase_24h": i % 3,
        "interest_categories": ["shoes", "books"],
        "interest_scores": [4.0 + i, 1.0],
        "interest_ref_ms": NOW_MS - 5_000,
        "recent_items": ["shoes-3"],
        "purchased_items": ["shoes-0"],
        "last_seen_ms": NOW_MS - 5_000,
        "events_total": 10 + i,
        "last_country": "DE",
    }


def item_row(category: str, i: int, at_ms: int) -> dict[str, object]:
    return {
        "category": category,
        "price": 10.0 + i,
        "trending_score": 50.0 / (i + 1) * (3 if category == "books" else 1),
        "trending_ref_ms": at_ms,
        "last_event_ms": at_ms,
        "views_1h": 1,
        "views_24h": 2,
    }


def _write_all(settings: Settings, at_ms: int) -> None:
    updates = [
        FeatureUpdate(USER_PROFILE, user, (at_ms - 5_000) * 1000, user_row(i))
        for i, user in enumerate(USERS)
    ]
    updates += [
        FeatureUpdate(ITEM_STATS, item, (at_ms - 1_000) * 1000, item_row(cat, n % 8, at_ms - 1_000))
        for n, (item, cat) in enumerate(ITEMS)
    ]
    writer = OnlineStoreWriter(settings)
    try:
        assert writer.write(updates) == len(USERS) + len(ITEMS)
    finally:
        writer.redis.close()


@pytest.fixture(scope="module")
def cluster(redis_cluster: Settings) -> Iterator[Settings]:
    settings = redis_cluster.model_copy(
        update={"serving": redis_cluster.serving.model_copy(update={"port": 0})}
    )
    _write_all(settings, NOW_MS)
    yield settings


def _master_pid(settings: Settings, host: str, port: int) -> int:
    pid = rc.process(settings, host, port).pid()
    assert pid is not None, f"no node of ours on {host}:{port}"
    return pid


def test_writer_rows_spread_over_every_master_and_serving_reads_them(cluster: Settings) -> None:
    masters = rc.nodes(cluster)
    # Each row is one hash on the master serving its slot, and every master holds some.
    held: dict[tuple[str, int], int] = {m: 0 for m in masters}
    for user in USERS:
        key = fs.redis_key(cluster.feast.project, USER_PROFILE, user)
        owner = rc.master_of(cluster, key)
        with rc.node_client(cluster, *owner) as node:
            assert node.exists(key) == 1, f"{user}'s row is not on its master {owner}"
        held[owner] += 1
    assert all(n > 0 for n in held.values()), f"rows per master: {held}"
    for host, port in masters:
        with rc.node_client(cluster, host, port) as node:
            assert node.dbsize() > 0, f"master {host}:{port} holds no key"

    reader = UserFeatureReader(cluster)
    try:
        for i, user in enumerate(USERS):
            got = reader.read(user, now_ms=NOW_MS)
            assert got is not None, user
            assert got.counts["product_view_1h"] == i and got.events_total == 10 + i
            assert got.interests == [("shoes", 4.0 + i), ("books", 1.0)]
            assert got.row_ts_ms == NOW_MS - 5_000 and got.country == "DE"
        assert reader.read("nobody-at-all", now_ms=NOW_MS) is None
        # The catalog refresh: the item index (one sorted set) + pipelined HMGETs of rows
        # that live on all three masters.
        catalog = ItemCatalog(cluster, reader.client)
        assert catalog.refresh_once() == len(ITEMS)
        row = catalog.snapshot.row("books-0")
        assert row is not None and row.category == "books" and row.price == 10.0
    finally:
        reader.close()

    # A full scan covers every master (redis-py's RedisCluster.scan_iter).
    client = redis_client(cluster.redis, request_path=False, timeout_s=5.0)
    try:
        user_keys = {fs.redis_key(cluster.feast.project, USER_PROFILE, u) for u in USERS}
        scanned = set(client.scan_iter(count=1000))
        assert user_keys <= scanned
        assert fs.item_index_key(cluster.feast.project).encode() in scanned
    finally:
        client.close()


def test_erasure_and_model_registry_run_on_the_cluster(cluster: Settings) -> None:
    writer = OnlineStoreWriter(cluster)
    try:
        # Erasure: HGET, DEL, Feast write, EXPIRE of one key.
        victim = USERS[7]
        writer.write([FeatureUpdate(USER_PROFILE, victim, (NOW_MS - 1_000) * 1000, {}, erase=True)])
        reader = UserFeatureReader(cluster)
        try:
            gone = reader.read(victim, now_ms=NOW_MS)
            assert gone is not None and gone.consent == "erased" and gone.events_total == 0
        finally:
            reader.close()
        key = fs.redis_key(cluster.feast.project, USER_PROFILE, victim)
        assert 0 < writer.redis.ttl(key) <= cluster.privacy.erasure_tombstone_ttl_s
        # The publish script touches the model's three keys in one EVAL: one slot.
        registry = ModelRegistry(writer.redis, cluster.feast.project)
        for n in (1, 2):
            version = ModelVersion("cluster-model", f"v{n}", NOW_MS + n, n, {}, {"w": n})
            assert registry.publish(version)
        assert [v.version for v in registry.versions("cluster-model")] == ["v1", "v2"]
        assert registry.rollback("cluster-model").version == "v1"
        assert registry.active_version("cluster-model") == registry.get("cluster-model", "v1")
    finally:
        writer.redis.close()


def test_feast_reads_what_the_writer_wrote_from_the_cluster(cluster: Settings) -> None:
    # `feast apply` through feature_store.yaml (PZ_REDIS_TYPE=redis_cluster) ...
    stack.feast_apply(cluster)
    # ... and the SDK's own online read with the settings-built config.
    assert fs.repo_config(cluster).online_store.redis_type.value == "redis_cluster"
    users = USERS[10:13]
    got = (
        fs.feature_store(cluster)
        .get_online_features(
            features=["user_profile:product_view_1h", "user_profile:interest_categories"],
            entity_rows=[{"user_id": u} for u in users],
        )
        .to_dict()
    )
    assert got["product_view_1h"] == [10, 11, 12]
    assert got["interest_categories"] == [["shoes", "books"]] * 3


def test_serving_survives_a_killed_master_and_recovers(cluster: Settings) -> None:
    """SIGKILL the master that holds a user's row: Recommend keeps answering (fallback,
    never an error); once the node is started again (from its nodes.conf and AOF) the
    answers are personalized again within a bounded wait."""
    user = USERS[3]
    key = fs.redis_key(cluster.feast.project, USER_PROFILE, user)
    host, port = rc.master_of(cluster, key)
    # Rows were written under the raw ids: serving looks them up unpseudonymised.
    plain_ids = cluster.privacy.model_copy(update={"hmac_secret": ""})
    app = ServingApp(cluster.model_copy(update={"privacy": plain_ids}), enable_collector=False)
    app.start()
    try:
        with RecommenderClient(app.target, deadline_s=2.0) as client:
            first = client.recommend(user, k=4)
            assert first.personalized and first.fallback_reason == ""
            assert "shoes-0" not in [i.item_id for i in first.items]  # purchased

            os.kill(_master_pid(cluster, host, port), signal.SIGKILL)
            answers = []
            started = time.monotonic()
            for _ in range(20):
                answers.append(client.recommend(user, k=4))
            elapsed = time.monotonic() - started
            assert all(a.items for a in answers), "a fallback answer came back empty"
            assert all(not a.personalized for a in answers)
            assert {a.fallback_reason for a in answers} == {"store_unavailable"}
            assert elapsed < 10.0, f"20 fallback answers took {elapsed:.1f}s"

            rc.start(cluster)  # restarts the killed node only; waits for cluster_state:ok
            deadline = time.monotonic() + 15.0
            while True:
                answer = client.recommend(user, k=4)
                if answer.personalized:
                    break
                assert time.monotonic() < deadline, (
                    f"still {answer.fallback_reason!r} 15 s after {host}:{port} came back"
                )
                time.sleep(0.2)
            # The row survived the kill (AOF): the profile is the one written.
            profile = client.get_user_profile(user)
            assert profile.found and profile.counts["product_view_1h"] == 3
    finally:
        app.stop(grace_s=0.5)
        rc.start(cluster)  # leave the session's cluster whole for later tests
