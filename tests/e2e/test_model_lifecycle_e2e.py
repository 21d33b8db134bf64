"""Model lifecycle end to end: the job learns click propensity from the system's own
recommendations, publishes versions, and serving swaps and rolls back without failing
a request.

A gRPC server (same pipeline) ranks with ``hybrid_v2`` (hybrid_v1 + learned
propensity). Shoppers view items, ask for recommendations (exposures with logged
features go to Kafka) and click some of the items shown, echoing the recommendation
id. The job labels every shown item after ``propensity_label_window_s``, a River
logistic regression learns them and publishes versions into the Redis registry; the
server picks the active version up by itself. Then, while a client keeps calling
``Recommend``, ``Admin.SetModelVersion`` rolls back and ``personalize model promote``
moves forward again: every call must succeed and the server must report the version
in use.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis

from personalization.model_registry import ModelRegistry
from personalization.settings import SETTINGS_JSON_ENV, Settings
from serving.client import RecommenderClient
from serving.propensity import MODEL_NAME
from tests.fixtures_pipeline import extra_server
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def v2_server(grpc_server: Settings) -> Iterator[Settings]:
    with extra_server(
        grpc_server,
        "grpc-server-v2",
        serving={"model_refresh_s": 0.2},
        ranking={"strategy": "hybrid_v2"},
    ) as settings:
        yield settings


def version_in_use(settings: Settings) -> str | None:
    url = f"http://127.0.0.1:{settings.metrics.serving_port}/metrics"
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    match = re.search(rf'pz_model_version\{{model="{MODEL_NAME}",version="([^"]+)"\}} 1\.0', text)
    return match.group(1) if match else None


def registry_state(r: redis.Redis, settings: Settings) -> str:
    """What Redis holds of the model's registry keys, for a failure's message."""
    keys = sorted(r.scan_iter(match=f"pz:{settings.feast.project}:model:*", count=1000))
    server = r.info("server")
    return (
        f"registry keys {keys}, redis up {server.get('uptime_in_seconds')} s, dbsize {r.dbsize()}"
    )


def event(user: str, kind: str, item: str, category: str, t: int, n: int, **props) -> dict:
    return {
        "event_id": f"{user}-{kind}-{n}",
        "user_id": user,
        "event_type": kind,
        "item_id": item,
        "category": category,
        "price": 10.0 + n % 7,
        "event_time": t,
        "properties": props,
    }


def test_propensity_is_learned_published_swapped_and_rolled_back(v2_server: Settings):
    settings = v2_server
    tag = uuid.uuid4().hex[:8]
    category = f"prop-{tag}"
    items = [f"prop-{tag}-{i}" for i in range(16)]
    now = int(time.time() * 1000)
    crowd = [
        event(f"crowd-{tag}-{i % 8}", "product_view", items[i % 16], category, now + i, i)
        for i in range(128)
    ]
    shoppers = [f"shopper-{tag}-{u}" for u in range(24)]
    own = [
        event(u, "product_view", items[(3 * n + k) % 16], category, now + 200 + k, k)
        for n, u in enumerate(shoppers)
        for k in range(2)
    ]
    client = RecommenderClient.from_settings(settings)
    r = redis.Redis(port=settings.redis.port)
    registry = ModelRegistry(r, settings.feast.project)
    try:
        assert client.collect(crowd + own).accepted == len(crowd) + len(own)
        wait_for(
            lambda: client.recommend(shoppers[-1], k=5).personalized,
            60,
            "personalized answers",
        )
        clicks = []
        for n, user in enumerate(shoppers):
            answer = client.recommend(user, k=5)
            assert answer.strategy == "hybrid_v2" and len(answer.items) == 5
            if n % 2 == 0:  # half of the shoppers click the first item shown
                item = answer.items[0]
                t = int(time.time() * 1000)
                clicks.append(
                    event(
                        user,
                        "click",
                        item.item_id,
                        item.category,
                        t,
                        100 + n,
                        rec_id=answer.recommendation_id,
                    )
                )
        assert client.collect(clicks).accepted == len(clicks)

        # 24 answers x 5 items = 120 labelled examples; a version every 20.
        tick = 0

        def published():
            nonlocal tick
            # Event time moves with the events: current-time events carry the
            # watermark past the label window (the exposures source goes idle).
            tick += 1
            ticker = f"ticker-{tag}"
            now_ms = int(time.time() * 1000)
            client.collect([event(ticker, "product_view", items[0], category, now_ms, tick)])
            versions = registry.versions(MODEL_NAME)
            return versions if len(versions) >= 3 and versions[-1].examples >= 100 else None

        versions = wait_for(published, 120, "propensity versions in the registry", every_s=1.0)
        newest = versions[-1]
        assert newest.metrics["positive_rate"] > 0
        assert 0.0 <= newest.metrics["roc_auc"] <= 1.0
        assert set(newest.params["weights"]) >= {"src_covisitation", "shown_before"}
        wait_for(
            lambda: version_in_use(settings) == registry.active(MODEL_NAME).version,
            30,
            "the server to use the active version",
        )

        # Swap under load: rollback and promote while Recommend keeps being called.
        failures: list[str] = []
        calls = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal calls
            with RecommenderClient.from_settings(settings) as loader:
                while not stop.is_set():
                    try:
                        answer = loader.recommend(shoppers[calls % len(shoppers)], k=5)
                        if len(answer.items) != 5:
                            failures.append(f"{len(answer.items)} items")
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")
                    calls += 1

        env = {**os.environ, SETTINGS_JSON_ENV: settings.model_dump_json()}

        def cli(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "ops.cli", "model", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        worker = threading.Thread(target=load)
        worker.start()
        try:
            # Rollback through the Admin RPC (token, audit record), promote with the CLI.
            # The load keeps labelling examples, so the shards may publish a version
            # between any read here and the rollback: the rollback steps back from the
            # version active when it runs, which the test cannot read beforehand. What
            # must hold: an older kept version is pinned, and a newer one exists.
            reply = client.set_model_version(MODEL_NAME, "rollback", reason="e2e")
            rolled = registry.active(MODEL_NAME)
            assert rolled.pinned and rolled.by == "rollback"
            kept = [v.version for v in registry.versions(MODEL_NAME)]
            assert rolled.version in kept and rolled.version < kept[-1]
            assert reply.audit_id and reply.subject == f"model:{MODEL_NAME}@{rolled.version}"
            wait_for(lambda: version_in_use(settings) == rolled.version, 30, "the rollback")
            # The version the promotion set, as the CLI reports it (the registry's newest
            # by the time the test could read it may already be a later one).
            promoted = cli("promote")
            moved = re.search(
                rf"{MODEL_NAME}: (v\d+) is active; new versions are followed", promoted
            )
            assert moved, promoted
            latest = moved.group(1)
            # Kept: the promoted version or newer ones (a burst of publishes after a slow
            # checkpoint can prune more than `keep` versions behind it within a second).
            kept_now = [v.version for v in registry.versions(MODEL_NAME)]
            assert kept_now and max(kept_now) >= latest, registry_state(r, settings)
            # Followed again: the promoted version, or a newer one the shards published
            # since (the load keeps labelling examples). Ids count examples.
            wait_for(lambda: (version_in_use(settings) or "") >= latest, 30, "the promotion")
            time.sleep(1.0)
        finally:
            stop.set()
            worker.join(timeout=30)
        assert calls > 50
        assert not failures, failures[:5]

        # Without the token, or for a version that does not exist: refused, nothing moves.
        intruder = RecommenderClient(f"127.0.0.1:{settings.serving.port}")
        with intruder, pytest.raises(grpc.RpcError) as denied:
            intruder.set_model_version(MODEL_NAME, "rollback")
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as missing:
            client.set_model_version(MODEL_NAME, "rollback", version="v404")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Nothing rolled back: new versions may still be published (the learner's shards
        # keep learning from the load's exposures) and followed, but none is pinned.
        after = registry.active(MODEL_NAME)
        assert after is not None, registry_state(r, settings)
        assert not after.pinned and after.by in ("publish", "promote")
        assert after.version >= latest  # ids count examples: never behind the promoted one
    finally:
        client.close()
        r.close()
