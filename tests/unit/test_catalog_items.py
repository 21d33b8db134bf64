"""The item catalog without services: record validation, content similarity, the
availability rule, cold start of new items, SimilarItems blending, Catalog triage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalization.catalog_records import (
    CatalogItem,
    item_from_features,
    parse_catalog_record,
    validate_catalog_item,
)
from personalization.events import EventRejected, Rejection
from personalization.settings import Settings
from personalization.v1 import catalog_pb2
from serving.candidates import CandidateContext, ContentSource
from serving.catalog_service import delete_payload, item_payload, triage_items
from serving.catalog_snapshot import ItemRow, build_snapshot
from serving.cold_start import (
    NEW_ITEM_SOURCE,
    ColdStartParams,
    merge_new_items,
    new_item_positions,
    new_items_for,
)
from serving.item_content import ContentWeights, build_item_content, item_content
from serving.online_features import UserFeatures
from serving.ranking import HYBRID_V1, RankedItem, RankingParams, rank
from serving.similar import SimilarParams, UnknownItem, similar_items

NOW = 1_760_000_000_000
DAY = 24 * 3600 * 1000


# --- records ------------------------------------------------------------------------


def test_a_full_record_is_normalised():
    item = validate_catalog_item(
        {
            "item_id": " sku-1 ",
            "title": "Trail  runner",
            "category_path": "Shoes > Running",
            "brand": "Acme",
            "price": "89.90",
            "tags": "trail|waterproof|trail",
            "available": "yes",
            "stock": "12",
            "created_at": "2025-10-01T00:00:00Z",
            "updated_at": NOW - 5,
        },
        now_ms=NOW,
    )
    assert item.item_id == "sku-1" and item.title == "Trail runner"
    assert item.category_path == ("Shoes", "Running") and item.category == "Running"
    assert item.tags == ("trail", "waterproof") and item.brand == "Acme"
    assert item.price == pytest.approx(89.9) and item.stock == 12 and item.available
    assert item.created_ms == 1_759_276_800_000 and item.updated_ms == NOW - 5
    assert item.sellable


@pytest.mark.parametrize(
    ("available", "stock", "sellable"),
    [(True, -1, True), (True, 0, False), (False, 5, False), (True, 3, True)],
)
def test_sellable_needs_availability_and_stock(available, stock, sellable):
    assert CatalogItem("x", available=available, stock=stock).sellable is sellable


def test_delete_is_a_tombstone_versioned_now_without_updated_at():
    item = validate_catalog_item({"op": "delete", "item_id": "sku-1"}, now_ms=NOW)
    assert item.deleted and not item.sellable and item.updated_ms == NOW
    assert item.feature_row()["deleted"] == 1 and item.feature_row()["available"] == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"title": "no id"}, "missing_item_id"),
        ({"item_id": "a", "price": -1}, "invalid_price"),
        ({"item_id": "a", "price": "cheap"}, "invalid_price"),
        ({"item_id": "a", "stock": 2.5}, "invalid_stock"),
        ({"item_id": "a", "stock": -3}, "invalid_stock"),
        ({"item_id": "a", "available": "maybe"}, "invalid_available"),
        ({"item_id": "a", "created_at": "yesterday"}, "invalid_created_at"),
        ({"item_id": "a", "created_at": NOW + 2 * DAY}, "invalid_created_at"),
        ({"item_id": "a", "colour": "red"}, "unknown_field"),
        ({"item_id": "a", "op": "merge"}, "unknown_op"),
        ({"item_id": "a", "tags": {"a": 1}}, "invalid_tags"),
        ({"item_id": "a", "tags": [f"t{i}" for i in range(40)]}, "invalid_tags"),
        ({"item_id": "a", "category_path": "/".join("abcdefghij")}, "invalid_category_path"),
        ({"item_id": "a", "brand": "b" * 200}, "invalid_brand"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(payload, reason):
    with pytest.raises(EventRejected) as err:
        validate_catalog_item(payload, now_ms=NOW)
    assert err.value.rejection.reason == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_record"),
        (b"x" * 20000, "record_too_large"),
    ],
)
def test_unparseable_records_are_rejections(raw, reason):
    outcome = parse_catalog_record(raw, now_ms=NOW)
    assert isinstance(outcome, Rejection) and outcome.reason == reason


def test_wire_and_store_round_trips():
    item = CatalogItem(
        "sku-9", "T", ("a", "b"), "Acme", 3.5, ("x",), True, 4, NOW - DAY, NOW, False
    )
    assert parse_catalog_record(item.to_json(), now_ms=NOW + 1) == item
    assert item_from_features("sku-9", item.feature_row()) == item
    assert item_from_features("sku-9", {}) is None
    gone = CatalogItem("sku-9", available=False, updated_ms=NOW, deleted=True)
    assert parse_catalog_record(gone.to_json(), now_ms=NOW + 1) == gone


# --- content similarity -------------------------------------------------------------


def test_weighted_jaccard_of_path_brand_and_tags():
    index = build_item_content(
        [
            ["c:shoes", "c:running", "b:acme", "t:trail"],
            ["c:shoes", "c:running", "b:acme", "t:road"],
            ["c:shoes", "c:hiking", "b:zeta"],
            ["c:books"],
        ],
        ContentWeights(category=1.0, brand=1.0, tag=0.5),
    )
    sims = index.similarity([0])
    # shared: shoes, running, acme = 3; union: those + trail + road = 4
    assert sims[1] == pytest.approx(3 / 4)
    # shared: shoes = 1; union: shoes running acme trail hiking zeta = 5.5
    assert sims[2] == pytest.approx(1 / 5.5)
    assert sims[3] == 0.0 and sims[0] == pytest.approx(1.0)
    assert index.shares_brand(0, 1) and not index.shares_brand(0, 2)


def meta(item_id, path, brand="", tags=(), *, created=0, available=True, stock=-1):
    return CatalogItem(
        item_id,
        category_path=tuple(path),
        brand=brand,
        tags=tuple(tags),
        available=available,
        stock=stock,
        created_ms=created,
        updated_ms=NOW,
    )


def snapshot(extra=()):
    rows = [
        ItemRow("shoe-1", "shoes", 50.0, 9.0, NOW, NOW, meta=meta("shoe-1", ["shoes"], "acme")),
        ItemRow("shoe-2", "shoes", 60.0, 5.0, NOW, NOW, meta=meta("shoe-2", ["shoes"], "acme")),
        ItemRow("shoe-3", "shoes", 70.0, 7.0, NOW, NOW, meta=meta("shoe-3", ["shoes"], "zeta")),
        ItemRow(
            "shoe-gone",
            "shoes",
            80.0,
            50.0,
            NOW,
            NOW,
            meta=meta("shoe-gone", ["shoes"], "acme", stock=0),
        ),
        ItemRow("book-1", "books", 10.0, 20.0, NOW, NOW),
        ItemRow("book-2", "books", 12.0, 15.0, NOW, NOW),
        *extra,
    ]
    return build_snapshot(rows, built_ms=NOW)


def shopper(interests=(("shoes", 4.0),), recent=(), purchased=()):
    return UserFeatures(
        user_id="u",
        interests=list(interests),
        recent_items=list(recent),
        purchased_items=list(purchased),
        features_age_ms=10,
    )


def test_items_without_a_record_are_alike_by_category():
    catalog = snapshot()
    sims = item_content(catalog).similarity([catalog.index_of["book-1"]])
    assert sims[catalog.index_of["book-2"]] == 1.0
    assert sims[catalog.index_of["shoe-1"]] == 0.0


# --- availability -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["blend_v1", HYBRID_V1])
def test_unavailable_items_are_never_recommended(strategy):
    catalog = snapshot()
    assert catalog.unavailable_positions().tolist() == [catalog.index_of["shoe-gone"]]
    params = RankingParams.from_settings(Settings(), strategy)
    for user in (shopper(), None):
        ranking = rank(user, catalog, k=10, now_ms=NOW, params=params)
        ids = [item.item_id for item in ranking.items]
        assert "shoe-gone" not in ids
        assert len(ids) == len(catalog) - 1  # everything else still fills the list


# --- cold start ---------------------------------------------------------------------


def new_shoe(item_id="shoe-new", path=("Shoes", "Running"), brand="acme", **kw):
    return ItemRow(
        item_id, path[-1], 99.0, meta=meta(item_id, path, brand, created=NOW - DAY, **kw)
    )


def test_new_items_are_recent_sellable_and_without_events():
    old = ItemRow("shoe-old", "shoes", meta=meta("shoe-old", ["shoes"], created=NOW - 60 * DAY))
    sold_out = new_shoe("shoe-out", stock=0)
    catalog = snapshot([new_shoe(), old, sold_out])
    positions = new_item_positions(catalog, NOW, 14 * DAY)
    assert [catalog.item_ids[i] for i in positions] == ["shoe-new"]


def test_a_new_item_matching_interest_is_new_in_that_category():
    catalog = snapshot([new_shoe()])
    picks = new_items_for(shopper(), catalog, NOW, ColdStartParams())
    assert [p.item_id for p in picks] == ["shoe-new"]
    # "shoes" is the broader level of Shoes > Running: one PARENT_DECAY step.
    assert picks[0].reason == "new in Shoes" and picks[0].score == pytest.approx(0.7)
    assert picks[0].source == NEW_ITEM_SOURCE
    assert new_items_for(shopper(interests=[("books", 3.0)]), catalog, NOW, ColdStartParams()) == []
    assert new_items_for(shopper(), catalog, NOW, ColdStartParams(), exclude=["shoe-new"]) == []
    assert new_items_for(None, catalog, NOW, ColdStartParams()) == []


def test_a_new_item_like_recent_items_scores_by_content():
    # No interest in hiking, but the user just viewed an acme trail shoe.
    viewed = ItemRow(
        "trail-1",
        "hiking",
        10.0,
        1.0,
        NOW,
        NOW,
        meta=meta("trail-1", ["hiking"], "acme", ["trail"]),
    )
    fresh = new_shoe("trail-new", path=("hiking",), tags=("trail",))
    catalog = snapshot([viewed, fresh])
    user = shopper(interests=[("books", 1.0)], recent=["trail-1"])
    picks = new_items_for(user, catalog, NOW, ColdStartParams())
    assert [p.item_id for p in picks] == ["trail-new"]
    assert picks[0].score == pytest.approx(1.0) and picks[0].reason == "new in hiking"


def test_new_items_take_the_last_slots_and_keep_features_parallel():
    listed = [RankedItem(f"i{n}", 1.0 - n / 10, "r", "c", "interest") for n in range(4)]
    logged = [{"f": float(n)} for n in range(4)]
    new = [RankedItem("n1", 0.9, "new in c", "c", NEW_ITEM_SOURCE), listed[0]]
    items, features = merge_new_items(listed, logged, new, k=4)
    assert [i.item_id for i in items] == ["i0", "i1", "i2", "n1"]
    assert features == ({"f": 0.0}, {"f": 1.0}, {"f": 2.0}, {})
    short, feats = merge_new_items(listed[:2], [], new, k=4)
    assert [i.item_id for i in short] == ["i0", "i1", "n1"] and feats == ()
    # A new item the strategy picked itself keeps its place and is explained as new.
    picked = [*listed[:2], RankedItem("n1", 0.5, "because you like c", "c", "interest")]
    relabelled, _ = merge_new_items(picked, [], new[:1], k=4)
    assert [(i.item_id, i.reason, i.source) for i in relabelled][2] == (
        "n1",
        "new in c",
        NEW_ITEM_SOURCE,
    )
    assert len(relabelled) == 3 and relabelled[2].score == 0.5


# --- similar items ------------------------------------------------------------------


def test_similar_items_blend_sources_with_reasons_and_exclusions():
    catalog = snapshot().with_models(
        covisitation={"shoe-1": (["book-1"], [3.0])},
        item_factors={
            "shoe-1": [1.0, 0.0],
            "shoe-3": [0.9, 0.1],
            "book-2": [0.0, 1.0],
        },
    )
    items = similar_items(catalog, "shoe-1", 10, SimilarParams())
    by_id = {item.item_id: item for item in items}
    assert "shoe-1" not in by_id and "shoe-gone" not in by_id
    assert by_id["book-1"].reason == "often viewed together"
    assert by_id["shoe-2"].reason == "same brand"
    assert by_id["shoe-3"].reason == "similar"
    assert "book-2" not in by_id  # nothing relates it to shoe-1
    assert items[0].item_id == "book-1"  # the co-visitation weight leads the blend
    scores = [item.score for item in items]
    assert scores == sorted(scores, reverse=True)
    without = similar_items(catalog, "shoe-1", 10, SimilarParams(), exclude=["shoe-2"])
    assert "shoe-2" not in {item.item_id for item in without}
    assert len(similar_items(catalog, "shoe-1", 1, SimilarParams())) == 1
    with pytest.raises(UnknownItem):
        similar_items(catalog, "nope", 5, SimilarParams())


def test_similar_items_cf_neighbours_count_without_content():
    rows = [
        ItemRow(f"m{i}", f"genre-{i}", trending_score=1.0, trending_ref_ms=NOW) for i in range(4)
    ]
    catalog = build_snapshot(rows, built_ms=NOW).with_models(
        item_factors={"m0": [1.0, 0.2], "m1": [0.9, 0.3], "m2": [-1.0, 0.0], "m3": [0.1, 1.0]}
    )
    items = similar_items(catalog, "m0", 3, SimilarParams())
    assert [item.item_id for item in items] == ["m1", "m3"]  # m2 points away: not similar
    assert all(item.source == "cf" and item.reason == "similar" for item in items)
    assert np.isfinite([item.score for item in items]).all()


# --- Catalog RPC triage -------------------------------------------------------------


def test_catalog_triage_sends_valid_items_to_the_topic_and_invalid_to_the_dlq():
    settings = Settings()
    good = catalog_pb2.CatalogItem(item_id="sku-1", title="T", category_path=["a"], stock=0)
    bad = catalog_pb2.CatalogItem(item_id="sku-2", price=-5)
    payloads = [item_payload(good), item_payload(bad), delete_payload("sku-3", 0)]
    records, rejected = triage_items(payloads, settings, NOW)
    topics = [topic for topic, _, _ in records]
    assert topics == [
        settings.kafka.catalog_topic,
        settings.kafka.dlq_topic,
        settings.kafka.catalog_topic,
    ]
    first = parse_catalog_record(records[0][2], now_ms=NOW)
    assert isinstance(first, CatalogItem) and first.stock == 0 and not first.sellable
    assert records[0][1] == "sku-1" and first.updated_ms == NOW
    letter = json.loads(records[1][2])
    assert letter["reason"] == "invalid_price" and letter["source"] == "grpc-catalog"
    assert [(r.index, r.item_id, r.reason) for r in rejected] == [(1, "sku-2", "invalid_price")]
    deleted = parse_catalog_record(records[2][2], now_ms=NOW)
    assert isinstance(deleted, CatalogItem) and deleted.deleted


def test_content_source_uses_brand_and_tags_of_catalogued_items():
    catalog = snapshot()
    allowed = np.ones(len(catalog), dtype=bool)
    anchor = catalog.index_of["shoe-1"]
    allowed[anchor] = False
    ctx = CandidateContext(
        user=shopper(recent=["shoe-1"]),
        catalog=catalog,
        now_ms=NOW,
        allowed=allowed,
        anchors=(anchor,),
    )
    scores = ContentSource().score(ctx)
    same_brand, other_brand = catalog.index_of["shoe-2"], catalog.index_of["shoe-3"]
    assert scores.scores[same_brand] == 1.0
    assert 0 < scores.scores[other_brand] < scores.scores[same_brand]
    assert scores.scores[catalog.index_of["book-1"]] == 0.0
    assert scores.reason(same_brand) == "similar to shoe-1"
