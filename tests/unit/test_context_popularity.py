"""Popularity per context (country, device): kept per item by the job, gathered per
context by serving, used by the blend for new visitors (pure, no services)."""

from __future__ import annotations

import pickle

import pytest

from flink_jobs import items
from personalization.context_keys import context_keys
from personalization.events import Event
from personalization.settings import ContextSettings, FeatureSettings
from serving.catalog_snapshot import ItemRow, build_snapshot, row_from_features
from serving.context_trending import (
    ContextQuery,
    build_index,
    context_trending,
    update_index,
)
from serving.ranking import RankingParams, rank
from serving.similar import SimilarParams, similar_items

T0 = 1_700_000_000_000
HOUR_MS = 3_600_000
HALF_LIFE_S = FeatureSettings().trending_half_life_s


def event(kind: str, t: int, country: str = "", device: str = "", n: int = 0) -> Event:
    return Event(
        event_id=f"e{n}",
        user_id="u1",
        event_type=kind,
        event_time_ms=t,
        item_id="sku-1",
        category="shoes",
        country=country,
        device=device,
    )


# --- the job: per item -----------------------------------------------------------------


def test_an_event_counts_for_its_country_device_and_both() -> None:
    state = items.ItemState("sku-1")
    items.apply_item_event(state, event("purchase", T0, "DE", "mobile"), HALF_LIFE_S, 8)
    items.apply_item_event(state, event("product_view", T0, "DE", "desktop", 1), HALF_LIFE_S, 8)
    assert state.contexts == {
        "c=DE&d=mobile": 5.0,
        "c=DE": 6.0,
        "d=mobile": 5.0,
        "c=DE&d=desktop": 1.0,
        "d=desktop": 1.0,
    }
    row = items.item_feature_row(state)
    assert row["context_keys"][:1] == ["c=DE"]  # strongest first
    assert row["context_scores"][0] == 6.0
    assert sum(row["context_scores"]) == pytest.approx(18.0)


def test_context_scores_decay_with_trending_on_one_scale() -> None:
    state = items.ItemState("sku-1")
    items.apply_item_event(state, event("product_view", T0, "FR"), HALF_LIFE_S, 8)
    later = T0 + int(HALF_LIFE_S * 1000)
    items.apply_item_event(state, event("product_view", later, "", "", 1), HALF_LIFE_S, 8)
    assert state.contexts["c=FR"] == pytest.approx(0.5)
    assert state.trending == pytest.approx(1.5)
    # A late event counts with the decay it would have had by now, as trending does.
    items.apply_item_event(state, event("product_view", T0, "FR", "", 2), HALF_LIFE_S, 8)
    assert state.contexts["c=FR"] == pytest.approx(1.0)
    assert state.trending == pytest.approx(2.0)


def test_only_the_strongest_contexts_are_kept() -> None:
    state = items.ItemState("sku-1")
    for n, country in enumerate(["DE", "DE", "DE", "FR", "FR", "IT"]):
        items.apply_item_event(state, event("product_view", T0, country, "", n), HALF_LIFE_S, 2)
    assert state.contexts == {"c=DE": 3.0, "c=FR": 2.0}
    off = items.ItemState("sku-1")
    items.apply_item_event(off, event("product_view", T0, "DE"), HALF_LIFE_S, 0)
    assert off.contexts == {} and off.trending == 1.0


def test_item_state_of_an_older_job_loads_without_contexts() -> None:
    state = items.ItemState("sku-1", category="shoes", trending=2.0)
    older = state.__getstate__()[:-1]  # type: ignore[attr-defined]  # before the field
    loaded = items.ItemState.__new__(items.ItemState)
    loaded.__setstate__(older)  # type: ignore[attr-defined]
    assert loaded.contexts == {} and loaded.trending == 2.0
    assert pickle.loads(pickle.dumps(state)) == state


# --- serving: per context ----------------------------------------------------------------


def row(item: str, trending: float, contexts: dict[str, float], category: str = "c") -> ItemRow:
    return ItemRow(
        item_id=item,
        category=category,
        trending_score=trending,
        trending_ref_ms=T0,
        last_event_ms=T0,
        contexts=tuple(sorted(contexts.items(), key=lambda kv: -kv[1])),
    )


ROWS = [
    # Globally the US items lead; Germans prefer de-*, French fr-*.
    row("us-1", 100.0, {"c=US": 90.0, "d=desktop": 90.0, "c=US&d=desktop": 90.0}),
    row("us-2", 80.0, {"c=US": 70.0, "d=mobile": 70.0, "c=US&d=mobile": 70.0}),
    row("de-1", 12.0, {"c=DE": 12.0, "d=mobile": 12.0, "c=DE&d=mobile": 12.0}),
    row("de-2", 9.0, {"c=DE": 9.0, "d=desktop": 9.0, "c=DE&d=desktop": 9.0}),
    row("de-3", 6.0, {"c=DE": 6.0, "d=mobile": 6.0, "c=DE&d=mobile": 6.0}),
    row("fr-1", 2.0, {"c=FR": 2.0}),
]
QUERY = ContextSettings(min_items=2, min_weight=5.0)


def test_the_most_specific_context_with_enough_data_wins() -> None:
    snapshot = build_snapshot(ROWS, built_ms=T0)
    both = context_trending(snapshot, ContextQuery.of("DE", "mobile", QUERY), HALF_LIFE_S)
    assert both is not None and both[1] == "popular in DE on mobile"
    positive = {snapshot.item_ids[i] for i in both[0].nonzero()[0]}
    assert positive == {"de-1", "de-3"}
    # One French item of weight 2: too little; no device: nothing broader -> None.
    assert context_trending(snapshot, ContextQuery.of("fr", "", QUERY), HALF_LIFE_S) is None
    # French on mobile: FR is thin, mobile is not.
    fr_mobile = context_trending(snapshot, ContextQuery.of("FR", "mobile", QUERY), HALF_LIFE_S)
    assert fr_mobile is not None and fr_mobile[1] == "popular on mobile"
    assert context_trending(snapshot, None, HALF_LIFE_S) is None
    assert ContextQuery.of(" ", "", QUERY) is None


def test_row_from_features_reads_the_context_lists() -> None:
    features = {"category": "c", "context_keys": ["c=DE", "d=mobile"], "context_scores": [2.5, 1.0]}
    assert row_from_features("x", features).contexts == (("c=DE", 2.5), ("d=mobile", 1.0))
    assert row_from_features("x", {"category": "c"}).contexts == ()


def test_the_index_updated_in_place_equals_one_built_afresh() -> None:
    before = build_snapshot(ROWS, built_ms=T0)
    changed = [
        row("de-1", 12.0, {"c=FR": 40.0}),  # de-1 went French
        row("fr-1", 2.0, {}),  # fr-1 lost its context
    ]
    after = before.with_updates(changed, built_ms=T0 + 1)
    fresh = build_snapshot([*ROWS[:2], changed[0], *ROWS[3:5], changed[1]], built_ms=T0)
    assert after.context_index == fresh.context_index
    assert before.context_index == build_index(
        r.contexts for r in sorted(ROWS, key=lambda r: (r.category, r.item_id))
    )
    assert "c=FR" in before.context_index and 0 not in before.context_index.get("c=FR", {})
    assert update_index(before.context_index, []) == before.context_index
    assert after.row("de-1") is not None and after.row("de-1").contexts == (("c=FR", 40.0),)  # type: ignore[union-attr]


PARAMS = RankingParams(interest_weight=1.0, trending_weight=0.3, half_life_s=HALF_LIFE_S)


def test_a_new_visitor_gets_the_trending_list_of_their_context() -> None:
    snapshot = build_snapshot(ROWS, built_ms=T0)
    query = ContextQuery.of("DE", "", QUERY)
    german = rank(None, snapshot, 4, T0, params=PARAMS, context=query)
    assert [i.item_id for i in german.items][:3] == ["de-1", "de-2", "de-3"]
    assert [i.reason for i in german.items][:3] == ["popular in DE"] * 3
    assert german.items[3].reason == "trending now"  # filled from global trending
    anywhere = rank(None, snapshot, 4, T0, params=PARAMS)
    assert [i.item_id for i in anywhere.items][:2] == ["us-1", "us-2"]
    thin = rank(None, snapshot, 4, T0, params=PARAMS, context=ContextQuery.of("FR", "", QUERY))
    assert [i.item_id for i in thin.items] == [i.item_id for i in anywhere.items]


@pytest.mark.parametrize(("country", "device"), [("de", " Mobile "), ("DE", "mobile")])
def test_context_keys_are_normalised_as_events_are(country: str, device: str) -> None:
    assert context_keys(country, device)[0] == "c=DE&d=mobile"


def test_the_hybrid_blend_falls_back_to_the_context_list_too() -> None:
    snapshot = build_snapshot(ROWS, built_ms=T0)
    hybrid = RankingParams(
        strategy="hybrid_v1",
        weights=(("cf", 0.3), ("covisitation", 1.0), ("interest", 0.1), ("trending", 0.1)),
        half_life_s=HALF_LIFE_S,
        exploration_share=0.0,
    )
    german = rank(None, snapshot, 3, T0, params=hybrid, context=ContextQuery.of("DE", "", QUERY))
    assert [i.item_id for i in german.items] == ["de-1", "de-2", "de-3"]
    assert {i.reason for i in german.items} == {"popular in DE"}
    anywhere = rank(None, snapshot, 3, T0, params=hybrid)
    assert [i.item_id for i in anywhere.items][:2] == ["us-1", "us-2"]
    assert {i.reason for i in anywhere.items} == {"trending now"}


def test_similar_items_prefer_what_is_popular_in_the_request_context() -> None:
    # All six items share the category "c": equally similar by content to the anchor.
    snapshot = build_snapshot(ROWS, built_ms=T0)
    params = SimilarParams(covisitation_weight=0.0, cf_weight=0.0, half_life_s=HALF_LIFE_S)
    anywhere = similar_items(snapshot, "fr-1", 5, params)
    assert [i.item_id for i in anywhere][:2] == ["us-1", "us-2"]  # global trending ties
    assert all(i.reason == "similar" for i in anywhere)
    german = similar_items(snapshot, "fr-1", 5, params, context=ContextQuery.of("DE", "", QUERY))
    assert [i.item_id for i in german][:3] == ["de-1", "de-2", "de-3"]
    assert german[0].reason == "similar, popular in DE"
    assert german[3].reason == "similar"  # not popular in DE: no context in its reason
    # A thin context changes nothing; a zero weight switches context off.
    thin = similar_items(snapshot, "de-1", 5, params, context=ContextQuery.of("FR", "", QUERY))
    assert thin == similar_items(snapshot, "de-1", 5, params)
    off = SimilarParams(covisitation_weight=0.0, cf_weight=0.0, context_weight=0.0)
    assert similar_items(
        snapshot, "fr-1", 5, off, context=ContextQuery.of("DE", "", QUERY)
    ) == similar_items(snapshot, "fr-1", 5, off)
    # Context never makes an unrelated item similar: nothing relates "x" to the others.
    lone = build_snapshot([*ROWS, row("x", 1.0, {"c=DE": 1.0}, category="other")], built_ms=T0)
    assert similar_items(lone, "x", 5, params, context=ContextQuery.of("DE", "", QUERY)) == []
