"""Ranking (blend_v1 and hybrid strategies) over small in-memory catalogs: no services needed."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from flink_jobs.items import decayed_trending
from personalization.settings import RankingSettings, Settings
from serving.candidates import COVISITATION as SOURCE_COVISITATION
from serving.catalog import ItemRow, build_snapshot, decay_factors, most_trending
from serving.online_features import UserFeatures
from serving.ranking import (
    CATALOG_EMPTY,
    HYBRID_V1,
    LEARNED,
    NO_INTERESTS,
    SOURCE_EXPLORATION,
    SOURCE_INTEREST,
    SOURCE_TRENDING,
    STORE_UNAVAILABLE,
    STRATEGY,
    UNKNOWN_USER,
    RankingParams,
    rank,
)
from serving.selection import top_indices

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


# --- hybrid strategies ------------------------------------------------------------------

HYBRID = RankingParams(
    half_life_s=6 * 3600.0,
    strategy=HYBRID_V1,
    weights=(
        ("cf", 0.3),
        ("covisitation", 1.0),
        ("interest", 0.1),
        ("trending", 0.1),
        ("content", 0.05),
    ),
    exclude_recent=2,
    category_cap_share=0.5,
    exploration_share=0.0,
)


def hybrid_catalog():
    """catalog() with factors (shoes align with the user's vector) and co-visitation."""
    base = catalog()
    factors = {}
    for item_id in base.item_ids:
        factors[item_id] = [1.0, 0.0] if item_id.startswith("garden") else [0.0, 1.0]
    return base.with_models(
        item_factors=factors,
        covisitation={
            "toys-0": (["books-5", "books-6", "shoes-9"], [3.0, 2.0, 1.0]),
            "toys-1": (["garden-7"], [1.0]),
        },
        item_tags={i: [i.split("-")[0]] for i in base.item_ids},
    )


def hybrid_user(**overrides):
    values = dict(
        user_id="u-h",
        interests=[("shoes", 1.0)],
        recent_items=["toys-0", "toys-1"],
        purchased_items=["books-6"],
        cf_vector=[1.0, 0.0],
        events_total=20,
        features_age_ms=1000,
    )
    values.update(overrides)
    return UserFeatures(**values)


def test_blend_v1_is_the_default_and_new_catalog_fields_are_optional():
    assert RankingParams().strategy == STRATEGY
    snapshot = catalog()
    assert snapshot.item_factors.size == 0 and not snapshot.covisitation
    assert not snapshot.has_factors
    # A hybrid ranking over a catalog without models still personalises by interest.
    ranking = rank(user(), snapshot, k=5, now_ms=NOW, params=HYBRID)
    assert ranking.personalized and ranking.strategy == HYBRID_V1


def test_hybrid_explains_each_item_by_its_source():
    ranking = rank(hybrid_user(), hybrid_catalog(), k=8, now_ms=NOW, params=HYBRID)
    assert ranking.personalized and ranking.strategy == HYBRID_V1
    by_id = {i.item_id: i for i in ranking.items}
    assert ranking.items[0].item_id == "books-5"
    assert by_id["books-5"].source == SOURCE_COVISITATION
    assert by_id["books-5"].reason == "viewed together with toys-0"
    reasons = {i.source: i.reason for i in ranking.items}
    assert reasons.get("cf") == "people like you liked this"
    assert all(i.reason for i in ranking.items)


def test_hybrid_excludes_purchased_and_just_seen_items():
    ranking = rank(
        hybrid_user(), hybrid_catalog(), k=20, now_ms=NOW, exclude=["garden-0"], params=HYBRID
    )
    ids = {i.item_id for i in ranking.items}
    assert ids.isdisjoint({"books-6", "toys-0", "toys-1", "garden-0"})


def test_hybrid_caps_items_per_category():
    k = 6
    params = dataclasses.replace(HYBRID, weights=(("cf", 1.0),))
    ranking = rank(hybrid_user(), hybrid_catalog(), k=k, now_ms=NOW, params=params)
    garden = [i for i in ranking.items if i.category == "garden"]
    # CF alone would fill all 6 slots with garden items.
    assert len(garden) == math.ceil(k * 0.5)
    assert all(i.reason == "people like you liked this" for i in garden)


def test_content_source_explains_similarity():
    params = dataclasses.replace(HYBRID, weights=(("content", 1.0),), category_cap_share=1.0)
    ranking = rank(hybrid_user(), hybrid_catalog(), k=3, now_ms=NOW, params=params)
    assert all(i.category == "toys" for i in ranking.items)
    assert ranking.items[0].reason == "similar to toys-0"
    assert ranking.items[0].source == "content"


def test_exploration_share_is_deterministic_per_seed():
    params = dataclasses.replace(HYBRID, exploration_share=0.2)
    snap, u = hybrid_catalog(), hybrid_user()
    first = rank(u, snap, k=10, now_ms=NOW, params=params, seed=1)
    again = rank(u, snap, k=10, now_ms=NOW, params=params, seed=1)
    assert first == again
    explored = [i for i in first.items if i.source == SOURCE_EXPLORATION]
    assert len(explored) == 2
    assert all(i.reason == "something new to try" for i in explored)
    # Exploration draws from just below the top k, never from excluded items.
    plain = rank(u, snap, k=10, now_ms=NOW, params=HYBRID)
    assert [i.item_id for i in first.items[:8]] == [i.item_id for i in plain.items[:8]]
    assert {i.item_id for i in explored}.isdisjoint({"books-6", "toys-0", "toys-1"})
    others = {
        tuple(i.item_id for i in rank(u, snap, 10, NOW, params=params, seed=s).items)
        for s in range(10)
    }
    assert len(others) > 1


def test_hybrid_unknown_user_and_user_without_signals_fall_back_to_trending():
    ranking = rank(None, hybrid_catalog(), k=3, now_ms=NOW, params=HYBRID)
    assert not ranking.personalized and ranking.fallback_reason == UNKNOWN_USER
    assert [i.item_id for i in ranking.items] == ["books-0", "books-1", "garden-0"]
    bare = UserFeatures(user_id="u-0")
    ranking = rank(bare, hybrid_catalog(), k=3, now_ms=NOW, params=HYBRID)
    assert not ranking.personalized and ranking.fallback_reason == NO_INTERESTS
    assert all(i.source == SOURCE_TRENDING for i in ranking.items)


def test_cf_vector_of_another_width_is_ignored():
    u = hybrid_user(cf_vector=[1.0, 0.0, 0.0])
    params = dataclasses.replace(HYBRID, weights=(("cf", 1.0),))
    ranking = rank(u, hybrid_catalog(), k=3, now_ms=NOW, params=params)
    assert ranking.fallback_reason == NO_INTERESTS


def test_cf_scores_of_a_user_with_few_events_count_for_less():
    from serving.candidates import CandidateContext, CfSource

    snap = hybrid_catalog()

    def best_cf_score(events: int, confidence_events: int = 5) -> float:
        ctx = CandidateContext(
            user=hybrid_user(events_total=events),
            catalog=snap,
            now_ms=NOW,
            allowed=np.ones(len(snap), dtype=bool),
            anchors=(),
            cf_confidence_events=confidence_events,
        )
        return float(CfSource().score(ctx).scores.max())

    # Factors learnt from one event are mostly their random start: a fifth of the scale.
    assert best_cf_score(1) == pytest.approx(0.2)
    assert best_cf_score(4) == pytest.approx(0.8)
    assert best_cf_score(5) == best_cf_score(50) == pytest.approx(1.0)
    assert best_cf_score(1, confidence_events=0) == pytest.approx(1.0)
    assert RankingParams.from_settings(Settings()).cf_confidence_events == 5


def test_params_from_settings():
    settings = Settings(ranking=RankingSettings(strategy="hybrid_v1"))
    params = RankingParams.from_settings(settings)
    assert params.strategy == HYBRID_V1 and dict(params.weights)["covisitation"] > 0
    # The learned blend is the default; blend_v1 stays the simple option.
    assert RankingParams.from_settings(Settings()).strategy == LEARNED
    with pytest.raises(ValueError):
        RankingParams.from_settings(Settings(ranking=RankingSettings(strategy="nope")))


def test_hybrid_ranking_on_a_10k_catalog_with_every_model():
    """A hybrid ranking over 10k items x 32 factors, co-visitation and tags, exploration
    on: ten distinct items, none the user bought. (Its CPU per call is a benchmark's:
    ``python -m bench ranking``.)"""
    from bench.ranking import catalog_and_user

    snap, u = catalog_and_user(10_000, 32, seed=0, now_ms=NOW)
    params = dataclasses.replace(HYBRID, exploration_share=0.1)
    for s in range(20):
        ranking = rank(u, snap, k=10, now_ms=NOW, params=params, seed=s)
        assert len(ranking.items) == 10
        assert len({item.item_id for item in ranking.items}) == 10
        assert not {item.item_id for item in ranking.items} & set(u.purchased_items)


# --- frequency capping and fatigue ---------------------------------------------------

# The rules below are those of every strategy; these tests read them through blend_v1,
# whose interest-driven order makes each rule's effect plain.
BLEND_SETTINGS = Settings(ranking=RankingSettings(strategy=STRATEGY))


def shown(base: UserFeatures, items=None, categories=None) -> UserFeatures:
    return dataclasses.replace(
        base, item_impressions=dict(items or {}), category_impressions=dict(categories or {})
    )


@pytest.mark.parametrize("strategy", [STRATEGY, HYBRID_V1])
def test_item_shown_up_to_the_cap_is_held_back(strategy):
    params = RankingParams.from_settings(Settings(), strategy)
    fresh = rank(user(), catalog(), k=4, now_ms=NOW, params=params)
    top = fresh.items[0].item_id
    capped = shown(user(), items={top: (params.fatigue.max_item_impressions, NOW - HOUR_MS)})
    after = rank(capped, catalog(), k=4, now_ms=NOW, params=params)
    assert top not in [i.item_id for i in after.items]
    assert len(after.items) == 4
    # Below the cap the item stays eligible but loses score to fatigue.
    once = shown(user(), items={top: (1, NOW - HOUR_MS)})
    tired = {i.item_id: i.score for i in rank(once, catalog(), 4, NOW, params=params).items}
    if top in tired:
        assert tired[top] < fresh.items[0].score


def test_cap_expires_with_the_window():
    params = RankingParams.from_settings(BLEND_SETTINGS)
    top = rank(user(), catalog(), k=4, now_ms=NOW, params=params).items[0].item_id
    long_ago = NOW - params.fatigue.window_ms - 1
    stale = shown(user(), items={top: (5, long_ago)})
    assert rank(stale, catalog(), k=4, now_ms=NOW, params=params).items[0].item_id == top


def test_capped_items_fill_a_list_nothing_else_can_fill():
    params = RankingParams.from_settings(BLEND_SETTINGS)
    small = catalog(per_category=2, categories=("shoes",))
    everything = shown(user(), items={"shoes-0": (9, NOW), "shoes-1": (9, NOW)})
    ranking = rank(everything, small, k=2, now_ms=NOW, params=params)
    assert [i.item_id for i in ranking.items] == ["shoes-0", "shoes-1"]
    assert all(math.isfinite(i.score) and i.score > 0 for i in ranking.items)


def test_category_fatigue_rotates_the_list():
    params = RankingParams.from_settings(BLEND_SETTINGS)
    base = user(interests=[("shoes", 5.0), ("toys", 4.5)])
    before = [i.category for i in rank(base, catalog(), k=4, now_ms=NOW, params=params).items]
    assert before[0] == "shoes"
    free = params.fatigue.category_fatigue_free
    tired = shown(base, categories={"shoes": (free + 40, NOW - HOUR_MS)})
    after = [i.category for i in rank(tired, catalog(), k=4, now_ms=NOW, params=params).items]
    assert after[0] != "shoes" and after.count("shoes") < before.count("shoes")


def test_no_fatigue_without_impressions_or_for_unknown_users():
    params = RankingParams.from_settings(BLEND_SETTINGS)
    plain = rank(user(), catalog(), k=5, now_ms=NOW, params=params)
    empty = rank(shown(user()), catalog(), k=5, now_ms=NOW, params=params)
    assert plain == empty
    unknown = rank(None, catalog(), k=5, now_ms=NOW, params=params)
    assert unknown.fallback_reason == UNKNOWN_USER and len(unknown.items) == 5


def test_sampled_top_indices_are_exactly_the_best_scores():
    """The sampled pre-filter returns the same top set as a full sort, ties and -inf too."""
    rng = np.random.default_rng(11)
    for trial in range(400):
        n = int(rng.integers(4096, 12000))
        pool = int(rng.integers(1, 300))
        shape = trial % 4
        if shape == 0:
            score = rng.random(n)
        elif shape == 1:
            score = np.round(rng.random(n), 2)  # many ties at the boundary
        elif shape == 2:
            score = np.full(n, -np.inf)  # almost everything banned
            score[rng.integers(0, n, 50)] = rng.random(50)
        else:
            score = np.sort(rng.random(n))  # the sample sees only a stride of a ramp
        top = top_indices(score, pool)
        assert top.shape[0] == pool and np.unique(top).shape[0] == pool
        assert (score[top] >= np.sort(score)[n - pool]).all()
