"""Ranking (blend_v1) over small in-memory catalogs: no services needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flink_jobs.items import decayed_trending
from serving.catalog import ItemRow, build_snapshot, decay_factors, most_trending
from serving.online_features import UserFeatures
from serving.ranking import (
    CATALOG_EMPTY,
    NO_INTERESTS,
    SOURCE_INTEREST,
    SOURCE_TRENDING,
    STORE_UNAVAILABLE,
    STRATEGY,
    UNKNOWN_USER,
    RankingParams,
    rank,
)

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000
PARAMS = RankingParams(interest_weight=1.0, trending_weight=0.3, half_life_s=6 * 3600.0)


def catalog(per_category: int = 10, categories=("shoes", "books", "toys", "garden")):
    rows = []
    for c, category in enumerate(categories):
        for i in range(per_category):
            # Trending falls with i; books are the most trending overall.
            base = 100.0 if category == "books" else 10.0 * (c + 1)
            rows.append(
                ItemRow(
                    item_id=f"{category}-{i}",
                    category=category,
                    price=10.0 + i,
                    trending_score=base / (i + 1),
                    trending_ref_ms=NOW - HOUR_MS,
                    last_event_ms=NOW - HOUR_MS,
                )
            )
    return build_snapshot(rows, built_ms=NOW)


def user(interests=(("shoes", 5.0),), purchased=(), user_id="u-1"):
    return UserFeatures(
        user_id=user_id,
        interests=list(interests),
        purchased_items=list(purchased),
        features_age_ms=1000,
    )


def test_interest_category_is_ranked_first():
    ranking = rank(user(), catalog(), k=6, now_ms=NOW, params=PARAMS)
    assert ranking.personalized and ranking.fallback_reason == ""
    assert ranking.strategy == STRATEGY
    first = ranking.items[0]
    assert first.item_id == "shoes-0" and first.category == "shoes"
    assert first.source == SOURCE_INTEREST
    # Books out-trend shoes, but the user likes shoes: shoes fill the category cap.
    assert [i.category for i in ranking.items].count("shoes") == 3


def test_stronger_interest_outranks_weaker():
    ranking = rank(
        user(interests=[("toys", 9.0), ("garden", 1.0)]), catalog(), k=4, now_ms=NOW, params=PARAMS
    )
    assert ranking.items[0].category == "toys"


def test_purchased_and_excluded_items_never_appear():
    ranking = rank(
        user(purchased=["shoes-0", "shoes-1"]),
        catalog(),
        k=10,
        now_ms=NOW,
        exclude=["shoes-2", "books-0", "not-in-catalog"],
        params=PARAMS,
    )
    ids = {i.item_id for i in ranking.items}
    assert ids.isdisjoint({"shoes-0", "shoes-1", "shoes-2", "books-0"})
    assert ranking.items[0].item_id == "shoes-3"


def test_diversity_caps_each_category_at_half_of_k():
    k = 7
    ranking = rank(user(), catalog(), k=k, now_ms=NOW, params=PARAMS)
    assert len(ranking.items) == k
    per_category: dict[str, int] = {}
    for item in ranking.items:
        per_category[item.category] = per_category.get(item.category, 0) + 1
    assert max(per_category.values()) <= math.ceil(k / 2)


def test_cap_is_soft_when_the_catalog_cannot_fill_k_otherwise():
    snapshot = catalog(per_category=10, categories=("shoes",))
    ranking = rank(user(), snapshot, k=6, now_ms=NOW, params=PARAMS)
    assert len(ranking.items) == 6


def test_unknown_user_gets_trending_fallback():
    ranking = rank(None, catalog(), k=5, now_ms=NOW, params=PARAMS)
    assert not ranking.personalized
    assert ranking.fallback_reason == UNKNOWN_USER
    assert [i.item_id for i in ranking.items][:3] == ["books-0", "books-1", "garden-0"]
    assert all(i.source == SOURCE_TRENDING and i.reason == "trending now" for i in ranking.items)


def test_user_without_catalogued_interests_falls_back_but_keeps_exclusions():
    ranking = rank(
        user(interests=[("unknown-category", 3.0)], purchased=["books-0"]),
        catalog(),
        k=5,
        now_ms=NOW,
        params=PARAMS,
    )
    assert not ranking.personalized and ranking.fallback_reason == NO_INTERESTS
    assert "books-0" not in {i.item_id for i in ranking.items}


def test_forced_fallback_reason_wins():
    ranking = rank(
        user(), catalog(), k=3, now_ms=NOW, params=PARAMS, fallback_reason=STORE_UNAVAILABLE
    )
    assert not ranking.personalized and ranking.fallback_reason == STORE_UNAVAILABLE


def test_scores_descend_and_every_item_has_a_reason():
    ranking = rank(user(interests=[("shoes", 2.0), ("toys", 1.0)]), catalog(), 12, NOW)
    scores = [i.score for i in ranking.items]
    # The diversity pass may promote a lower score only after the cap; here it does not.
    assert scores == sorted(scores, reverse=True)
    assert all(i.reason for i in ranking.items)
    reasons = {i.reason for i in ranking.items}
    assert "popular in shoes" in reasons
    assert any(r.startswith("because you like") for r in reasons)


def test_empty_catalog_and_zero_k():
    assert rank(user(), build_snapshot(()), 5, NOW).fallback_reason == CATALOG_EMPTY
    assert rank(user(), catalog(), 0, NOW).items == []


def test_vectorised_decay_matches_the_jobs_decayed_trending():
    refs = np.array([NOW - 7 * HOUR_MS, NOW, NOW + HOUR_MS, 0], dtype=np.int64)
    scores = np.array([8.0, 3.0, 2.0, 1.0])
    half_life_s = 6 * 3600.0
    expected = [
        decayed_trending(s, int(r), NOW, half_life_s) for s, r in zip(scores, refs, strict=True)
    ]
    assert scores * decay_factors(refs, NOW, half_life_s) == pytest.approx(expected)


def test_trending_uses_decay_to_now():
    # An older spike loses to a smaller but recent score once decayed.
    rows = [
        ItemRow("old", "a", trending_score=100.0, trending_ref_ms=NOW - 48 * HOUR_MS),
        ItemRow("new", "a", trending_score=10.0, trending_ref_ms=NOW),
    ]
    ranking = rank(None, build_snapshot(rows), 2, NOW, params=PARAMS)
    assert [i.item_id for i in ranking.items] == ["new", "old"]


def test_catalog_keeps_most_trending_rows():
    rows = [ItemRow(f"i{i}", "c", trending_score=float(i), trending_ref_ms=NOW) for i in range(10)]
    kept = most_trending(rows, 3, NOW, 3600.0)
    assert sorted(r.item_id for r in kept) == ["i7", "i8", "i9"]


def test_category_index_is_contiguous():
    snapshot = catalog(per_category=3)
    shoes = snapshot.category_indices("shoes")
    assert sorted(snapshot.item_ids[i] for i in shoes) == ["shoes-0", "shoes-1", "shoes-2"]
    assert snapshot.category_indices("nope").size == 0
    row = snapshot.row("shoes-1")
    assert row is not None and row.category == "shoes" and row.price == 11.0
