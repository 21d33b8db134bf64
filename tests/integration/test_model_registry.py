"""The model registry, the serving-side watcher and the `personalize model` CLI on a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from personalization.model_registry import ModelRegistry, UnknownVersion
from personalization.model_versions import ModelVersion
from personalization.settings import SETTINGS_JSON_ENV, Settings
from serving.propensity import MODEL_NAME, ModelWatcher

pytestmark = pytest.mark.integration


def version(n: int, weight: float = 1.0) -> ModelVersion:
    return ModelVersion(
        model=MODEL_NAME,
        version=f"v{n:09d}",
        created_ms=1_700_000_000_000 + n,
        examples=n,
        metrics={"roc_auc": 0.5 + n / 1000},
        params={"weights": {"src_cf": weight}, "intercept": -1.0},
    )


@pytest.fixture()
def registry(redis_server: Settings):
    client = redis.Redis(host="127.0.0.1", port=redis_server.redis.port)
    # A project of its own per test: nothing leaks between tests.
    yield ModelRegistry(client, f"test-{uuid.uuid4().hex[:8]}", keep=4), client
    client.close()


def test_new_versions_are_followed_until_a_rollback_pins(registry):
    reg, _ = registry
    assert reg.active(MODEL_NAME) is None
    assert reg.publish(version(10)) and reg.publish(version(20))
    assert reg.active(MODEL_NAME).version == "v000000020"
    pointer = reg.rollback(MODEL_NAME)
    assert pointer.version == "v000000010" and pointer.pinned
    # A newer version is stored but not followed while pinned.
    assert not reg.publish(version(30))
    assert reg.active(MODEL_NAME).version == "v000000010"
    assert [v.version for v in reg.versions(MODEL_NAME)][-1] == "v000000030"
    promoted = reg.promote(MODEL_NAME)
    assert promoted.version == "v000000030" and not promoted.pinned
    assert reg.publish(version(40)) and reg.active(MODEL_NAME).version == "v000000040"


def test_rollback_steps_back_from_the_version_active_when_it_runs(registry):
    """The target is resolved in the same script that moves the pointer (one step on the
    server): a version published after a caller listed the versions is the one stepped
    back from, never skipped."""
    reg, client = registry
    with pytest.raises(UnknownVersion, match="no active version"):
        reg.rollback(MODEL_NAME)
    with pytest.raises(UnknownVersion, match="no versions"):
        reg.promote(MODEL_NAME)
    reg.publish(version(10))
    with pytest.raises(UnknownVersion, match="oldest kept version"):
        reg.rollback(MODEL_NAME)
    listed = [v.version for v in reg.versions(MODEL_NAME)]
    reg.publish(version(20))  # published after the listing: followed
    pointer = reg.rollback(MODEL_NAME)
    assert pointer.version == listed[-1] == "v000000010" and pointer.by == "rollback"
    assert reg.active(MODEL_NAME) == pointer
    assert reg.promote(MODEL_NAME, "v000000020") == reg.active(MODEL_NAME)
    assert not reg.active(MODEL_NAME).pinned
    # A version in the order without its record is never pointed at.
    client.hdel(reg._keys(MODEL_NAME)[0], "v000000010")
    with pytest.raises(UnknownVersion, match="no version v000000010"):
        reg.rollback(MODEL_NAME)
    assert reg.active(MODEL_NAME).version == "v000000020"


def test_replayed_and_older_versions_never_move_the_pointer_back(registry):
    reg, _ = registry
    reg.publish(version(20))
    assert not reg.publish(version(10))  # an older version replayed after a restore
    assert reg.publish(version(20))  # the same version again: idempotent
    assert reg.active(MODEL_NAME).version == "v000000020"
    assert reg.get(MODEL_NAME, "v000000020") == version(20)


def test_old_versions_are_pruned_but_never_the_active_one(registry):
    reg, _ = registry
    reg.publish(version(1))
    reg.rollback(MODEL_NAME, "v000000001")
    for n in range(2, 9):
        reg.publish(version(n))
    kept = [v.version for v in reg.versions(MODEL_NAME)]
    assert "v000000001" in kept and len(kept) <= 5
    assert kept[-1] == "v000000008"
    with pytest.raises(UnknownVersion):
        reg.get(MODEL_NAME, "v000000002")
    with pytest.raises(UnknownVersion):
        reg.rollback(MODEL_NAME, "v000000002")


def test_listing_is_whole_while_a_burst_of_publishes_prunes(redis_server: Settings):
    """The job publishes hundreds of versions at once after a slow checkpoint, each
    pruning the oldest beyond ``keep``: a listing read meanwhile still has every kept
    version with its record (ids and records read in one step; read apart, the ids of
    pruned versions came back without records, and a lifecycle e2e run read none)."""
    project = f"test-{uuid.uuid4().hex[:8]}"
    reader_client = redis.Redis(host="127.0.0.1", port=redis_server.redis.port)
    writer_client = redis.Redis(host="127.0.0.1", port=redis_server.redis.port)
    reader = ModelRegistry(reader_client, project, keep=4)
    writer = ModelRegistry(writer_client, project, keep=4)
    for n in range(1, 5):
        writer.publish(version(n))
    stop = threading.Event()
    published = [4]

    def burst() -> None:
        n = 5
        while not stop.is_set() and n < 200_000:
            writer.publish(version(n))
            published[0] = n
            n += 1

    thread = threading.Thread(target=burst)
    thread.start()
    listings: list[list[str]] = []
    try:
        # Read until the burst has published 200 versions past the first read (each
        # pruning one), however fast this machine runs the two threads.
        first = published[0]
        deadline = time.monotonic() + 60
        while published[0] < first + 200 and time.monotonic() < deadline:
            listings.append([v.version for v in reader.versions(MODEL_NAME)])
    finally:
        stop.set()
        thread.join(10)
        reader_client.close()
        writer_client.close()
    assert published[0] >= first + 200  # the reads did overlap a burst
    assert len(listings) >= 20
    for kept in listings:
        assert len(kept) == 4, kept
        numbers = [int(v[1:]) for v in kept]
        assert numbers == list(range(numbers[0], numbers[0] + 4)), kept


def test_watcher_swaps_between_requests_and_survives_bad_records(registry):
    reg, client = registry
    watcher = ModelWatcher(reg, refresh_s=3600)
    assert not watcher.refresh() and watcher.current is None
    reg.publish(version(1, weight=2.0))
    assert watcher.refresh()
    model = watcher.current
    assert model is not None and model.version == "v000000001"
    assert model.weights == {"src_cf": 2.0}
    # A corrupt version record is skipped; the model in use stays.
    versions_key = reg._keys(MODEL_NAME)[0]
    reg.publish(version(2))
    client.hset(versions_key, "v000000002", b"not json")
    assert not watcher.refresh()
    assert watcher.current is model
    reg.rollback(MODEL_NAME, "v000000001")
    assert not watcher.refresh()  # already in use


def test_cli_lists_rolls_back_and_promotes(redis_server: Settings):
    project = f"cli-{uuid.uuid4().hex[:8]}"
    data = redis_server.model_dump()
    data["feast"]["project"] = project
    settings = Settings.model_validate(data)
    reg = ModelRegistry(redis.Redis(port=settings.redis.port), project)
    for n in (5, 6, 7):
        reg.publish(version(n))
    env = {**os.environ, SETTINGS_JSON_ENV: settings.model_dump_json()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "model", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "* v000000007" in listed.stdout and "roc_auc=0.5070" in listed.stdout
    back = cli("rollback")
    assert back.returncode == 0 and reg.active(MODEL_NAME).version == "v000000006"
    assert reg.active(MODEL_NAME).pinned
    to = cli("rollback", "--version", "v000000005")
    assert to.returncode == 0 and reg.active(MODEL_NAME).version == "v000000005"
    missing = cli("rollback", "--version", "v404")
    assert missing.returncode == 2 and "no version" in (missing.stdout + missing.stderr)
    assert cli("promote").returncode == 0
    assert reg.active(MODEL_NAME).version == "v000000007"
    assert not reg.active(MODEL_NAME).pinned
    assert json.loads(reg.active(MODEL_NAME).to_json())["by"] == "promote"


def test_untagged_keys_of_the_older_layout_are_taken_over(redis_server: Settings):
    """Before the cluster hash tag the keys were ``pz:<project>:model:<name>:...``: a
    single-node registry renames them on first use, pinned pointer included."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.redis.port)
    project = f"test-{uuid.uuid4().hex[:8]}"
    legacy = f"pz:{project}:model:{MODEL_NAME}"
    old = version(5)
    client.hset(f"{legacy}:versions", old.version, old.to_json())
    client.zadd(f"{legacy}:order", {old.version: old.created_ms})
    pointer = {"version": old.version, "pinned": True, "by": "rollback", "at_ms": 1}
    client.set(f"{legacy}:active", json.dumps(pointer))
    try:
        reg = ModelRegistry(client, project)
        active = reg.active(MODEL_NAME)
        assert active is not None and active.version == old.version and active.pinned
        assert [v.version for v in reg.versions(MODEL_NAME)] == [old.version]
        assert not client.exists(f"{legacy}:versions", f"{legacy}:order", f"{legacy}:active")
        assert all(client.exists(k) for k in reg._keys(MODEL_NAME))
        assert "{" + MODEL_NAME + "}" in reg._keys(MODEL_NAME)[0]
        # Still pinned after the move: a newer version is stored, not followed.
        assert not reg.publish(version(6))
    finally:
        client.close()


def shard_version(shard: int, n: int, weight: float, shards: int = 2) -> ModelVersion:
    return ModelVersion(
        model=MODEL_NAME,
        version=f"s{shard}-v{n:09d}",
        created_ms=1_700_000_000_000 + n,
        examples=n,
        metrics={"roc_auc": 0.6},
        params={"weights": {"src_cf": weight}, "intercept": -1.0, "shard": shard, "shards": shards},
    )


def test_shard_versions_publish_their_example_weighted_average(registry):
    """The propensity learner runs as keyed shards; serving only ever sees their average."""
    reg, _ = registry
    assert reg.publish(shard_version(0, 30, 1.0))
    only = reg.active_version(MODEL_NAME)
    assert only is not None and only.version == "v000000030"
    assert only.params["weights"] == {"src_cf": 1.0}
    assert reg.publish(shard_version(1, 10, 3.0))
    both = reg.active_version(MODEL_NAME)
    assert both is not None and both.version == "v000000040" and both.examples == 40
    assert both.params["weights"]["src_cf"] == pytest.approx((30 * 1.0 + 10 * 3.0) / 40)
    assert "shard" not in both.params
    # A replay of an older shard version after a job restore does not move it back.
    reg.publish(shard_version(1, 5, 9.0))
    again = reg.active_version(MODEL_NAME)
    assert again is not None and again.version == "v000000040"
    assert again.params == both.params
    # Shards of another shard count (an earlier configuration) are left out.
    assert reg.publish(shard_version(0, 50, 2.0, shards=1))
    assert reg.active_version(MODEL_NAME).params["weights"]["src_cf"] == pytest.approx(2.0)
    assert [v.version for v in reg.versions(MODEL_NAME)] == [
        "v000000030",
        "v000000040",
        "v000000050",
    ][-4:]
