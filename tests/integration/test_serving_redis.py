"""Serving against a real redis-server: Feast writes, serving reads the same values.

Starts its own redis-server on a free port (no shared fixtures), writes rows with
Feast's own ``RedisOnlineStore`` and checks the one-HMGET reader, the catalog refresh,
the Redis-down fallback and a Recommend call through an in-process gRPC server.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore

from personalization import feature_store as fs
from personalization.feature_store import item_index_key
from personalization.model_registry import ModelRegistry
from personalization.model_versions import ModelVersion
from personalization.settings import Settings
from serving.catalog import ItemCatalog
from serving.client import RecommenderClient
from serving.online_features import UserFeatureReader
from serving.propensity import MODEL_NAME, ModelWatcher
from serving.recommender import Recommender
from serving.server import ONLINE_STORE_HEALTH, ServingApp

pytestmark = pytest.mark.integration

REDIS_SERVER = "/usr/bin/redis-server"
NOW_MS = int(time.time() * 1000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path: Path, redis_port: int) -> Settings:
    return Settings.model_validate(
        {
            "run_dir": str(tmp_path),
            "redis": {"port": redis_port},
            "serving": {"port": 0, "catalog_refresh_s": 0.2},
            # The read path under test, ranked by the interest-driven blend, whose order
            # these users' interests make plain (the default learned blend weighs them
            # against trending: tests/unit/test_learned_blend.py).
            "ranking": {"strategy": "blend_v1"},
        }
    )


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[Settings]:
    if not Path(REDIS_SERVER).exists() and not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    try:
        yield _settings(tmp_path, port)
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


USER_ROW = {
    "product_view_5m": 3,
    "product_view_1h": 7,
    "product_view_24h": 12,
    "add_to_cart_5m": 1,
    "add_to_cart_1h": 1,
    "add_to_cart_24h": 2,
    "purchase_5m": 0,
    "purchase_1h": 0,
    "purchase_24h": 1,
    "session_count": 4,
    "session_events": 9,
    "session_duration_s": 420,
    "interest_categories": ["shoes", "books"],
    "interest_scores": [4.5, 1.25],
    "interest_ref_ms": NOW_MS - 5_000,
    "recent_items": ["shoes-3", "books-1"],
    "cart_items": ["shoes-3"],
    "purchased_items": ["shoes-0"],
    "first_seen_ms": NOW_MS - 86_400_000,
    "last_seen_ms": NOW_MS - 5_000,
    "last_purchase_ms": NOW_MS - 2 * 86_400_000,
    "frequency": 1,
    "monetary": 59.9,
    "events_total": 40,
    "segments": ["browser", "returning"],
    "last_device": "mobile",
    "last_country": "DE",
    "age_band": "25-34",
    "gender": "",
}


def _write_user(settings: Settings, user_id: str, row: dict, ts_ms: int) -> None:
    RedisOnlineStore().online_write_batch(
        fs.repo_config(settings),
        fs.feature_view("user_profile"),
        [
            (
                fs.entity_key("user_profile", user_id),
                fs.encode_row("user_profile", row),
                datetime.fromtimestamp(ts_ms / 1000, tz=UTC),
                None,
            )
        ],
        None,
    )


def _write_items(
    settings: Settings, items: list[tuple[str, str, float]], at_ms: int = NOW_MS - 1000
) -> None:
    """Rows as the online-store writer writes them, plus its item index."""
    data = []
    for item_id, category, trending in items:
        row = {
            "category": category,
            "price": 10.0,
            "trending_score": trending,
            "trending_ref_ms": at_ms,
            "last_event_ms": at_ms,
            "views_1h": 1,
            "views_24h": 2,
            "carts_1h": 0,
            "carts_24h": 0,
            "purchases_1h": 0,
            "purchases_24h": 0,
        }
        data.append(
            (
                fs.entity_key("item_stats", item_id),
                fs.encode_row("item_stats", row),
                datetime.fromtimestamp(at_ms / 1000, tz=UTC),
                None,
            )
        )
    RedisOnlineStore().online_write_batch(
        fs.repo_config(settings), fs.feature_view("item_stats"), data, None
    )
    client = redis.Redis(port=settings.redis.port)
    client.zadd(item_index_key(settings.feast.project), {i: at_ms for i, _, _ in items})
    client.close()


ITEMS = [
    (f"{c}-{i}", c, 50.0 / (i + 1) * (3 if c == "books" else 1))
    for c in ("shoes", "books", "toys")
    for i in range(8)
]


def test_reader_decodes_what_feast_wrote(local_redis: Settings):
    ts_ms = NOW_MS - 5_000
    _write_user(local_redis, "u-1", USER_ROW, ts_ms)
    reader = UserFeatureReader(local_redis)
    features = reader.read("u-1", now_ms=NOW_MS)
    assert features is not None
    assert features.counts["product_view_1h"] == 7 and features.counts["purchase_24h"] == 1
    assert features.interests == [("shoes", 4.5), ("books", 1.25)]
    assert features.recent_items == ["shoes-3", "books-1"]
    assert features.cart_items == ["shoes-3"] and features.purchased_items == ["shoes-0"]
    assert (features.session_count, features.session_events) == (4, 9)
    assert features.monetary == pytest.approx(59.9) and features.frequency == 1
    assert features.segments == ["browser", "returning"]
    assert (features.device, features.country) == ("mobile", "DE")
    assert features.last_seen_ms == NOW_MS - 5_000
    assert features.row_ts_ms == ts_ms and features.features_age_ms == 5_000
    assert features.recency_days(NOW_MS) == pytest.approx(2.0)
    assert reader.read("nobody", now_ms=NOW_MS) is None
    # Feast's own reader agrees on the row it finds.
    _, feast_row = RedisOnlineStore().online_read(
        fs.repo_config(local_redis),
        fs.feature_view("user_profile"),
        [fs.entity_key("user_profile", "u-1")],
    )[0]
    assert feast_row is not None
    assert fs.decode_value(feast_row["interest_categories"]) == ["shoes", "books"]
    reader.close()


def test_catalog_refresh_and_personalized_recommendation(local_redis: Settings):
    _write_items(local_redis, ITEMS)
    _write_user(local_redis, "u-1", USER_ROW, NOW_MS - 5_000)
    reader = UserFeatureReader(local_redis)
    catalog = ItemCatalog(local_redis, reader.client)
    assert catalog.refresh_once() == len(ITEMS)
    assert len(catalog.snapshot) == len(ITEMS) and catalog.health().ok
    # An incremental refresh picks up a new item written after the first one.
    _write_items(local_redis, [("garden-0", "garden", 1.0)])
    catalog.refresh_once()
    assert "garden-0" in catalog.snapshot.index_of
    # Members whose index score did not move are not fetched again.
    assert catalog.refresh_once() == 0
    # A newer row of a known item is patched into the arrays in place.
    _write_items(local_redis, [("toys-7", "toys", 999.0)], at_ms=NOW_MS)
    assert catalog.refresh_once() == 1
    row = catalog.snapshot.row("toys-7")
    assert row is not None and row.trending_score == 999.0
    assert len(catalog.snapshot) == len(ITEMS) + 1
    _write_items(local_redis, [("toys-7", "toys", 6.0)], at_ms=NOW_MS + 1)
    catalog.refresh_once()
    row = catalog.snapshot.row("toys-7")
    assert row is not None and row.trending_score == 6.0

    rec = Recommender(local_redis, reader, catalog).recommend("u-1", k=6)
    assert rec.personalized and rec.fallback_reason == ""
    assert rec.items[0].item_id == "shoes-1"  # shoes-0 was purchased
    assert rec.features_age_ms >= 5_000 and len(rec.recommendation_id) == 32
    unknown = Recommender(local_redis, reader, catalog).recommend("nobody", k=3)
    assert unknown.fallback_reason == "unknown_user" and unknown.items[0].item_id == "books-0"


def _write_item_models(
    settings: Settings,
    item_id: str,
    factor: float,
    neighbours: list[str],
    at_ms: int,
    written_ms: int | None = None,
) -> None:
    """An item_stats row with co-visitation and its item_cf factors, as the writer
    writes them, and the item index entry that makes the catalog fetch it; the rows'
    values are as of ``at_ms``, their Feast timestamp and index score ``written_ms``."""
    written_ms = written_ms or at_ms
    ts = datetime.fromtimestamp(written_ms / 1000, tz=UTC)
    stats = {
        "category": "toys",
        "trending_score": float(at_ms % 1000),
        "trending_ref_ms": at_ms,
        "last_event_ms": at_ms,
        "covisit_items": neighbours,
        "covisit_scores": [1.0] * len(neighbours),
    }
    for view, row in (("item_stats", stats), ("item_cf", {"cf_vector": [factor, 1.0]})):
        RedisOnlineStore().online_write_batch(
            fs.repo_config(settings),
            fs.feature_view(view),
            [(fs.entity_key(view, item_id), fs.encode_row(view, row), ts, None)],
            None,
        )
    client = redis.Redis(port=settings.redis.port)
    client.zadd(item_index_key(settings.feast.project), {item_id: written_ms})
    client.close()


def test_the_background_refresh_defers_models_until_their_interval(local_redis: Settings):
    """serving.catalog_models_refresh_s: a refresh that moves no item keeps the previous
    factors and co-visitation lists (they still line up) until the interval has passed,
    then builds them, also when nothing moved since; a direct refresh always does."""
    now = [NOW_MS]
    for n in range(3):
        _write_item_models(local_redis, f"t{n}", 0.0, [f"t{(n + 1) % 3}"], NOW_MS - 1000)
    catalog = ItemCatalog(local_redis, clock_ms=lambda: now[0])
    assert catalog.refresh_once(defer_models=True) == 3  # the first: models at once
    snap = catalog.snapshot
    t0 = snap.index_of["t0"]
    assert snap.item_factors[t0, 0] == 0.0
    assert snap.index_of["t1"] in snap.covisitation[t0][0]

    _write_item_models(local_redis, "t0", 5.0, ["t2"], NOW_MS)
    now[0] += 1_000
    catalog.refresh_once(defer_models=True)
    snap = catalog.snapshot
    assert snap.row("t0").trending_score == float(NOW_MS % 1000)  # the row: patched
    assert snap.item_factors[t0, 0] == 0.0  # the models: as they were
    assert snap.index_of["t1"] in snap.covisitation[t0][0]

    now[0] += 10_000  # past catalog_models_refresh_s (10 s), nothing new to read
    catalog.refresh_once(defer_models=True)
    snap = catalog.snapshot
    assert snap.item_factors[t0, 0] == 5.0
    assert snap.index_of["t1"] not in snap.covisitation[t0][0]
    assert snap.index_of["t2"] in snap.covisitation[t0][0]

    _write_item_models(local_redis, "t1", 7.0, ["t0"], NOW_MS + 1)
    now[0] += 1_000
    catalog.refresh_once()  # direct (tests, tools): models with every refresh
    assert catalog.snapshot.item_factors[catalog.snapshot.index_of["t1"], 0] == 7.0
    # Models that moved under an unchanged row (the index moved, the row did not) are
    # built once due, though no row changes.
    _write_item_models(local_redis, "t2", 9.0, ["t1"], NOW_MS - 1000, written_ms=NOW_MS + 2)
    now[0] += 1_000
    catalog.refresh_once(defer_models=True)
    t2 = catalog.snapshot.index_of["t2"]
    assert catalog.snapshot.item_factors[t2, 0] == 0.0  # not due yet
    now[0] += 10_000
    catalog.refresh_once(defer_models=True)
    assert catalog.snapshot.item_factors[t2, 0] == 9.0
    # The stored lists leave the cyclic GC once collected (tuples of strings and
    # floats; the pair holding them at the next collection), so its full collections,
    # which pause the request loop, do not walk them.
    gc.collect()
    gc.collect()
    assert catalog._covisit and not any(gc.is_tracked(v) for v in catalog._covisit.values())


def test_a_new_server_loads_its_catalog_from_a_redis_slower_than_the_request_timeout(
    local_redis: Settings,
):
    """The catalog refresh reads through its own client (serving.catalog_read_timeout_s).
    With the request path's socket timeout (50 ms), a page of item rows on a loaded
    machine timed out on every try, and a server started beside a big catalog never
    loaded it. A Redis paused for 300 ms (CLIENT PAUSE) stands in for the load."""
    items = [(f"big-{n}", f"cat-{n % 7}", float(n)) for n in range(3_000)]
    _write_items(local_redis, items)
    admin = redis.Redis(host=local_redis.redis.host, port=local_redis.redis.port)
    reader = UserFeatureReader(local_redis)

    def pause_redis() -> None:
        admin.execute_command("CLIENT", "PAUSE", 300, "ALL")

    pause_redis()
    with pytest.raises(redis.TimeoutError):  # through the request path's client
        ItemCatalog(local_redis, reader.client).refresh_once()
    time.sleep(0.4)
    pause_redis()
    catalog = ItemCatalog(local_redis)  # the server's way: the refresh's own client
    assert catalog.refresh_once() >= len(items)
    assert {"big-0", "big-2999"} <= set(catalog.snapshot.index_of)
    assert catalog.health().ok
    catalog.stop()  # closes the pool it made
    reader.close()
    admin.close()


def test_a_new_servers_model_watcher_loads_from_a_redis_slower_than_the_request_timeout(
    local_redis: Settings,
):
    """The propensity model watcher polls in the background through a client of its own,
    as the catalog refresh does: with the request path's 50 ms socket timeout, a Redis
    busier than that would keep a new server on no model at all."""
    registry = ModelRegistry(
        redis.Redis(host=local_redis.redis.host, port=local_redis.redis.port),
        local_redis.feast.project,
    )
    registry.publish(
        ModelVersion(
            model=MODEL_NAME,
            version="v000000007",
            created_ms=NOW_MS,
            examples=7,
            metrics={},
            params={"weights": {"src_cf": 1.5}, "intercept": -1.0},
        )
    )
    admin = redis.Redis(host=local_redis.redis.host, port=local_redis.redis.port)
    reader = UserFeatureReader(local_redis)
    admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
    # Through the request path's client: the read times out, no model.
    request_path = ModelWatcher(ModelRegistry(reader.client, local_redis.feast.project), 3600)
    assert not request_path.refresh() and request_path.current is None
    time.sleep(0.4)
    app = ServingApp(local_redis, enable_collector=False)  # built as `serve` builds it
    watcher = app.recommender.models
    assert watcher is not None
    admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
    assert watcher.refresh()
    assert watcher.current is not None and watcher.current.version == "v000000007"
    app.stop(grace_s=0)
    reader.close()
    admin.close()


def test_redis_down_falls_back_to_catalog_trending_fast(local_redis: Settings, tmp_path: Path):
    _write_items(local_redis, ITEMS)
    reader = UserFeatureReader(local_redis)
    catalog = ItemCatalog(local_redis, reader.client)
    catalog.refresh_once()
    dead = _settings(tmp_path, _free_port())  # nothing listens there
    recommender = Recommender(dead, UserFeatureReader(dead), catalog)
    start = time.perf_counter()
    rec = recommender.recommend("u-1", k=5)
    elapsed = time.perf_counter() - start
    assert not rec.personalized and rec.fallback_reason == "store_unavailable"
    assert [i.item_id for i in rec.items][:1] == ["books-0"]
    assert elapsed < 0.1, f"fallback took {elapsed * 1000:.1f} ms"


def test_recommend_through_grpc(local_redis: Settings):
    _write_items(local_redis, ITEMS)
    _write_user(local_redis, "u-1", USER_ROW, NOW_MS - 5_000)
    app = ServingApp(local_redis, enable_collector=False).start()
    try:
        with RecommenderClient(app.target, deadline_s=2.0) as client:
            response = client.recommend("u-1", k=4, exclude=["shoes-1"])
            assert response.personalized and response.strategy == "blend_v1"
            assert response.items[0].item_id == "shoes-2"
            assert all(i.reason for i in response.items)
            profile = client.get_user_profile("u-1")
            assert profile.found and profile.counts["product_view_5m"] == 3
            assert [i.category for i in profile.interests] == ["shoes", "books"]
            assert not client.get_user_profile("nobody").found
            for k in (-1, 1000):
                with pytest.raises(grpc.RpcError) as err:
                    client.recommend("u-1", k=k)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                client.recommend(" ", k=3)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert app.health.get(ONLINE_STORE_HEALTH) is True
    finally:
        app.stop(grace_s=0.5)


def test_collect_without_kafka_is_unavailable_and_big_batches_are_refused(
    local_redis: Settings,
):
    settings = local_redis.model_copy(
        update={
            "kafka": local_redis.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{_free_port()}"}
            ),
            "serving": local_redis.serving.model_copy(
                update={"collect_ack_timeout_s": 0.3, "max_batch_events": 5}
            ),
        }
    )
    app = ServingApp(settings).start()
    event = {"user_id": "u", "event_type": "page_view", "event_time": NOW_MS}
    try:
        with RecommenderClient(app.target, deadline_s=3.0) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.collect([event])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as err:
                client.collect([event] * 6)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        app.stop(grace_s=0.5)


def test_online_store_health_follows_redis(local_redis: Settings):
    app = ServingApp(local_redis, enable_collector=False).start()
    try:
        assert app.health.get(ONLINE_STORE_HEALTH) is True
        redis.Redis(port=local_redis.redis.port).shutdown(nosave=True)
        with RecommenderClient(app.target, deadline_s=2.0) as client:
            response = client.recommend("u-1", k=3)
            assert response.fallback_reason == "store_unavailable"
            with pytest.raises(grpc.RpcError) as err:
                client.get_user_profile("u-1")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert app.health.get(ONLINE_STORE_HEALTH) is False
    finally:
        app.stop(grace_s=0.5)


def test_tls_server_accepts_tls_clients_only(local_redis: Settings, tmp_path: Path):
    """TLS option: a client trusting the certificate gets answers; plaintext does not."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (needed only to make a test certificate)")
    key, cert = _self_signed(
        tmp_path, "localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"
    )
    data = local_redis.model_dump()
    data["serving"].update(tls_cert_file=str(cert), tls_key_file=str(key))
    settings = Settings.model_validate(data)
    _write_items(settings, ITEMS)
    app = ServingApp(settings, enable_collector=False).start()
    try:
        with RecommenderClient(app.target, deadline_s=2.0, tls_root_cert=cert.read_bytes()) as c:
            assert c.recommend("anyone", k=3).items
        with RecommenderClient(app.target, deadline_s=1.0) as plain, pytest.raises(grpc.RpcError):
            plain.recommend("anyone", k=3)
    finally:
        app.stop(grace_s=0.5)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(tmp_path: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A key and a certificate for ``name`` signed by the CA ``(ca_key, ca_cert)``."""
    key, csr, cert = (tmp_path / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
    )
    ext = tmp_path / f"{name}.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        str(cert),
        "-extfile",
        str(ext),
    )
    return key, cert


def _self_signed(tmp_path: Path, name: str, *extra: str) -> tuple[Path, Path]:
    """A key and a self-signed certificate for ``name`` (a CA, or a server with
    ``extra`` options such as its subjectAltName)."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-subj",
        f"/CN={name}",
        *extra,
    )
    return key, cert


def test_mutual_tls_accepts_only_clients_with_a_certificate_of_the_client_ca(
    local_redis: Settings, tmp_path: Path
):
    """serving.tls_client_ca_file: the handshake refuses a client without a certificate,
    or with one another CA signed; a client the CA signed gets answers."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (needed only to make test certificates)")
    ca = _self_signed(tmp_path, "pz-test-ca")
    server_key, server_cert = _signed(tmp_path, "localhost", ca, server=True)
    client_key, client_cert = _signed(tmp_path, "shop-backend", ca, server=False)
    other_key, other_cert = _signed(
        tmp_path, "intruder", _self_signed(tmp_path, "other-ca"), server=False
    )
    data = local_redis.model_dump()
    data["serving"].update(
        tls_cert_file=str(server_cert), tls_key_file=str(server_key), tls_client_ca_file=str(ca[1])
    )
    settings = Settings.model_validate(data)
    _write_items(settings, ITEMS)
    app = ServingApp(settings, enable_collector=False).start()
    root = ca[1].read_bytes()
    try:
        with RecommenderClient(
            app.target,
            deadline_s=2.0,
            tls_root_cert=root,
            tls_client_cert=client_cert.read_bytes(),
            tls_client_key=client_key.read_bytes(),
        ) as trusted:
            assert trusted.recommend("anyone", k=3).items
        for cert, key in ((None, None), (other_cert.read_bytes(), other_key.read_bytes())):
            with (
                RecommenderClient(
                    app.target,
                    deadline_s=2.0,
                    tls_root_cert=root,
                    tls_client_cert=cert,
                    tls_client_key=key,
                ) as refused,
                pytest.raises(grpc.RpcError) as err,
            ):
                refused.recommend("anyone", k=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        app.stop(grace_s=0.5)


def test_stalled_redis_opens_the_breaker_and_recovery_closes_it(local_redis: Settings):
    """A Redis that stops answering (SIGSTOP) costs the request path a few timeouts, not
    one per request: the breaker opens, reads are skipped, answers fall back; once Redis
    answers again the next probe closes it and answers are personalized again."""
    from prometheus_client import REGISTRY

    _write_items(local_redis, ITEMS)
    _write_user(local_redis, "u-1", USER_ROW, NOW_MS - 5_000)
    reader = UserFeatureReader(local_redis)
    catalog = ItemCatalog(local_redis, reader.client)
    catalog.refresh_once()
    recommender = Recommender(local_redis, reader, catalog)
    assert recommender.recommend("u-1", k=3).personalized

    def skipped() -> float:
        return REGISTRY.get_sample_value("pz_serving_store_reads_skipped_total") or 0.0

    redis_pid = int(redis.Redis(port=local_redis.redis.port).info("server")["process_id"])
    before = skipped()
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        answers = [recommender.recommend("u-1", k=3) for _ in range(20)]
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    assert all(a.fallback_reason == "store_unavailable" and a.items for a in answers)
    threshold = local_redis.serving.store_breaker_failures
    # At most the failures that open it plus a probe per open period reached Redis.
    assert skipped() - before >= 20 - threshold - 2
    deadline = time.monotonic() + 10
    while not recommender.recommend("u-1", k=3).personalized:
        assert time.monotonic() < deadline, "answers did not become personalized again"
        time.sleep(0.1)
