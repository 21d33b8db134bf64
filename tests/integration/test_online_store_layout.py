"""The writer's rows are Feast's rows: the contract between our write path and Feast's.

``OnlineStoreWriter`` encodes rows itself (``personalization/feast_redis_encoding.py``)
and writes every view of a batch in two pipelines; Feast's
``RedisOnlineStore.online_write_batch`` is the reference implementation of the same
layout. Both write the same rows, one to entity ids of its own, and the two hashes must
be equal field for field and byte for byte, after every step of a history that includes
stale and equal timestamps (skipped by both) and two views of one entity in a batch
where only one is newer. On one node and on the local 3-master cluster."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from feature_repo.features import FEATURE_VIEWS
from feature_repo.names import ENTITY_OF_VIEW, ITEM_CF, ITEM_STATS, USER_CF, USER_PROFILE
from personalization import feature_store as fs
from personalization.feature_updates import FeatureUpdate
from personalization.online_store import OnlineStoreWriter
from personalization.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def writer(request: pytest.FixtureRequest) -> Iterator[OnlineStoreWriter]:
    base: Settings = request.getfixturevalue(
        "redis_server" if request.param == "single" else "redis_cluster"
    )
    # A project of its own: the session's Redis is shared, and the item rows written here
    # go into the project's item index, which other tests' catalogs read whole.
    settings = base.model_copy(
        update={"feast": base.feast.model_copy(update={"project": "pz_layout_test"})}
    )
    store = OnlineStoreWriter(settings)
    try:
        yield store
    finally:
        store.redis.close()


def _random_value(kind: str, rng: random.Random) -> Any:
    n = rng.choice([0, 1, 3, 40])
    if kind == "int64":
        return rng.choice([0, 1, -1, 2**40, -(2**62), rng.randrange(-1000, 10**12)])
    if kind == "double":
        return rng.choice([0.0, -0.0, 1.5, -2.25e-7, rng.uniform(-1e6, 1e6)])
    if kind == "string":
        return rng.choice(["", "granted", "é漢字", "x" * 300, f"s{rng.random()}"])
    if kind == "string_list":
        return [rng.choice(["", "i42", "ü", "y" * 130]) for _ in range(n)]
    if kind == "double_list":
        return [rng.uniform(-10, 10) for _ in range(n)]
    assert kind == "int64_list"
    return [rng.randrange(-(2**40), 2**40) for _ in range(n)]


def _random_row(view: str, rng: random.Random, *, partial: bool = False) -> dict[str, Any]:
    kinds = fs.feature_kinds(view)
    names = [n for n in kinds if not partial or rng.random() < 0.5]
    return {name: _random_value(kinds[name], rng) for name in names}


def _feast_write(writer: OnlineStoreWriter, rows: list[FeatureUpdate]) -> None:
    """The reference: Feast's own write, a call per view, as the writer used to do."""
    by_view: dict[str, list[FeatureUpdate]] = {}
    for row in rows:
        by_view.setdefault(row.view, []).append(row)
    for view, view_rows in by_view.items():
        data = [
            (
                fs.entity_key(view, row.entity_id),
                fs.encode_row(view, row.features),
                datetime.fromtimestamp(row.version_us / 1_000_000, tz=UTC),
                None,
            )
            for row in view_rows
        ]
        writer.store.online_write_batch(writer.config, fs.feature_view(view), data, None)


def _as(rows: list[FeatureUpdate], suffix: str) -> list[FeatureUpdate]:
    return [
        FeatureUpdate(r.view, r.entity_id + suffix, r.version_us, r.features, erase=r.erase)
        for r in rows
    ]


def _hash(writer: OnlineStoreWriter, view: str, entity: str) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = writer.redis.hgetall(  # type: ignore[assignment]
        fs.redis_key(writer.project, view, entity)
    )
    return raw


def _assert_same(writer: OnlineStoreWriter, rows: list[FeatureUpdate]) -> None:
    """Feast writes ``rows`` under ``<id>-feast``, the writer under ``<id>-ours``."""
    _feast_write(writer, _as(rows, "-feast"))
    writer.write(_as(rows, "-ours"))
    for view, entity in {(r.view, r.entity_id) for r in rows}:
        feast = _hash(writer, view, entity + "-feast")
        ours = _hash(writer, view, entity + "-ours")
        assert feast, f"{view} {entity}: Feast wrote nothing"
        assert ours == feast, f"{view} {entity}: fields differ: {set(ours) ^ set(feast)}"
        ttl = writer.redis.ttl(fs.redis_key(writer.project, view, entity + "-ours"))
        expected = fs.key_ttl_s(writer.settings)
        if expected:
            assert 0 < ttl <= expected  # type: ignore[operator]


def test_every_feature_of_every_view_is_stored_as_feast_stores_it(
    writer: OnlineStoreWriter,
) -> None:
    rng = random.Random(7)
    t0 = int(time.time() * 1_000_000)
    run = time.time_ns()
    for round_ in range(5):
        rows = [
            FeatureUpdate(view, f"layout-{run}-{view}-{round_}-{i}", t0 + i, _random_row(view, rng))
            for view in FEATURE_VIEWS
            for i in range(4)
        ]
        _assert_same(writer, rows)


def test_stale_equal_and_newer_rows_are_skipped_or_written_alike(
    writer: OnlineStoreWriter,
) -> None:
    """A history over one user (profile + CF: one hash) and one item (stats + CF)."""
    rng = random.Random(11)
    user, item = f"layout-user-{time.time_ns()}", f"layout-item-{time.time_ns()}"
    t = int(time.time() * 1_000_000)
    assert ENTITY_OF_VIEW[USER_PROFILE] == ENTITY_OF_VIEW[USER_CF]

    def rows(view: str, entity: str, version: int, partial: bool = False) -> FeatureUpdate:
        return FeatureUpdate(view, entity, version, _random_row(view, rng, partial=partial))

    history = [
        [rows(USER_PROFILE, user, t + 10), rows(ITEM_STATS, item, t + 10)],
        # older than stored: skipped
        [rows(USER_PROFILE, user, t + 5), rows(ITEM_STATS, item, t + 9)],
        # equal: skipped; the CF views are new to the hashes: written beside them
        [rows(USER_PROFILE, user, t + 10), rows(USER_CF, user, t + 3), rows(ITEM_CF, item, t)],
        # one view of the entity newer, the other older, in one batch
        [rows(USER_PROFILE, user, t + 20, partial=True), rows(USER_CF, user, t + 2)],
        [rows(USER_CF, user, t + 30), rows(USER_PROFILE, user, t + 19)],
        [rows(ITEM_STATS, item, t + 40, partial=True), rows(ITEM_CF, item, t + 40)],
    ]
    for batch in history:
        _assert_same(writer, batch)
    # The skips were real: the profile holds the t + 20 row's timestamp.
    stored = _hash(writer, USER_PROFILE, user + "-ours")
    assert fs.timestamp_us(stored[f"{fs.TS_FIELD_PREFIX}{USER_PROFILE}".encode()]) == t + 20


def test_rows_of_one_view_and_entity_in_a_batch_end_as_feasts_do(
    writer: OnlineStoreWriter,
) -> None:
    """``write`` coalesces first; the write path itself still orders such rows by version,
    as Feast does (its per-batch newest), whatever their order in the batch."""
    rng = random.Random(13)
    user = f"layout-dup-{time.time_ns()}"
    t = int(time.time() * 1_000_000)
    batch = [
        FeatureUpdate(USER_PROFILE, user, t + 50, _random_row(USER_PROFILE, rng)),
        FeatureUpdate(USER_PROFILE, user, t + 10, _random_row(USER_PROFILE, rng)),
        FeatureUpdate(USER_PROFILE, user, t + 60, _random_row(USER_PROFILE, rng, partial=True)),
    ]
    _feast_write(writer, _as(batch, "-feast"))
    writer._write_rows(_as(batch, "-ours"))
    ours = _hash(writer, USER_PROFILE, user + "-ours")
    assert ours == _hash(writer, USER_PROFILE, user + "-feast")
    assert fs.timestamp_us(ours[f"{fs.TS_FIELD_PREFIX}{USER_PROFILE}".encode()]) == t + 60
