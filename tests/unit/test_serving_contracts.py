"""One contract per role of ranking, run over every registered implementation.

River's ``river/checks`` is the model: whatever is registered in
``serving.candidates.CANDIDATE_SOURCES``, ``serving.strategies.STRATEGIES`` or
``serving.rules.RULE_STAGES`` (and every stage of every strategy's pipeline) is checked
here without a line of test code of its own:

- inputs are not mutated (the user, the exclusions, every catalog column, and nothing a
  later request could see is left in the catalog's caches);
- implementations pickle and the round-tripped object answers the same;
- the same input and seed give the same output;
- an empty catalog, an unknown user and unknown items (ids, categories, a CF vector of
  another width) are answered without exceptions, and unknown ids change nothing;
- and the role's own promises (scores in 0..1 for sources; k distinct, allowed,
  explained items for strategies; only finite, in-range picks for stages).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import serving
from personalization.settings import RankingSettings, Settings
from serving import candidates as cand
from serving.catalog_snapshot import CatalogSnapshot, ItemRow, build_snapshot
from serving.online_features import UserFeatures
from serving.propensity import FEATURES, PropensityModel
from serving.ranking import (
    STRATEGIES,
    RankingParams,
    RankRequest,
    rank,
    strategy_for,
)
from serving.ranking_types import CATALOG_EMPTY, FIXED_STRATEGIES, HYBRID, HYBRID_V1, NO_INTERESTS
from serving.rules import (
    RULE_STAGES,
    DiversityStage,
    ExclusionStage,
    FatigueStage,
    RuleStage,
    Slate,
    run_rules,
)

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000
CATEGORIES = ("shoes", "books", "toys", "garden")
GHOSTS = ["ghost-1", "ghost-2"]


# --- small real inputs ------------------------------------------------------------------


def plain_catalog() -> CatalogSnapshot:
    """Four categories of eight items; a third of the trending scores tie at zero."""
    rows = []
    for c, category in enumerate(CATEGORIES):
        for i in range(8):
            trending = 0.0 if i % 3 == 2 else (10.0 * (c + 1)) / (i + 1)
            rows.append(
                ItemRow(
                    item_id=f"{category}-{i}",
                    category=category,
                    price=5.0 * (i + 1),
                    trending_score=trending,
                    trending_ref_ms=NOW - (i + 1) * HOUR_MS,
                    last_event_ms=NOW - HOUR_MS,
                )
            )
    return build_snapshot(rows, built_ms=NOW)


def model_catalog() -> CatalogSnapshot:
    """plain_catalog() with CF factors, co-visitation lists and tags."""
    base = plain_catalog()
    ids = base.item_ids
    return base.with_models(
        item_factors={
            i: [1.0, 0.5] if i.startswith(("garden", "toys")) else [0.1, 1.0]
            for n, i in enumerate(ids)
            if n % 5  # some items have no factors
        },
        covisitation={
            "toys-0": (["books-5", "books-6", "shoes-7", "ghost-1"], [3.0, 2.0, 1.0, 9.0]),
            "toys-1": (["garden-7", "shoes-1"], [1.0, 0.5]),
            "shoes-3": (["books-1"], [2.0]),
        },
        item_tags={i: [i.split("-")[0], f"size-{int(i.split('-')[1]) % 3}"] for i in ids},
    )


def empty_catalog() -> CatalogSnapshot:
    return build_snapshot((), built_ms=NOW)


CATALOGS: dict[str, Callable[[], CatalogSnapshot]] = {
    "plain": plain_catalog,
    "models": model_catalog,
}


def rich_user() -> UserFeatures:
    """A user who touches every rule: interests, history, purchases, impressions."""
    return UserFeatures(
        user_id="u-rich",
        interests=[("shoes", 4.0), ("toys", 2.5), ("unknown-category", 9.0)],
        recent_items=["toys-0", "ghost-1", "toys-1", "shoes-3"],
        purchased_items=["books-6", "ghost-2"],
        cf_vector=[1.0, 0.2],
        segments=["buyer", "mobile"],
        item_impressions={
            "shoes-0": (3, NOW - HOUR_MS),  # at the frequency cap
            "shoes-1": (1, NOW - HOUR_MS),  # fatigued
            "ghost-1": (5, NOW - HOUR_MS),
            "toys-2": (9, NOW - 400 * HOUR_MS),  # outside the impression window
        },
        category_impressions={"shoes": (30, NOW - HOUR_MS), "ghost-category": (50, NOW)},
        features_age_ms=1000,
    )


def ghost_user() -> UserFeatures:
    """Everything the user refers to is unknown to the catalog."""
    return UserFeatures(
        user_id="u-ghost",
        interests=[("unknown-category", 3.0), ("other", float("nan"))],
        recent_items=list(GHOSTS),
        purchased_items=["ghost-3"],
        cf_vector=[0.5, 0.5, 0.5, 0.5, 0.5],  # a model of another width
        item_impressions={g: (7, NOW) for g in GHOSTS},
        category_impressions={"unknown-category": (99, NOW)},
        features_age_ms=10,
    )


USERS: dict[str, Callable[[], UserFeatures | None]] = {
    "rich": rich_user,
    "ghost": ghost_user,
    "unknown": lambda: None,
}

PROPENSITY = PropensityModel(
    "v-test", {name: 0.3 * (i % 5) - 0.5 for i, name in enumerate(FEATURES)}, -0.2
)


def params_for(name: str) -> RankingParams:
    """The parameters the settings give ``name``; a weighted strategy weighs every term."""
    strategies = (
        {name: dict.fromkeys(cand.BLEND_TERMS, 0.5)} if name not in FIXED_STRATEGIES else {}
    )
    settings = Settings(
        ranking=RankingSettings(
            strategy=name,
            strategies=strategies,
            exploration_share=0.3,
            exploration_pool_factor=2,
        )
    )
    return RankingParams.from_settings(settings)


def request(
    catalog: CatalogSnapshot,
    user: UserFeatures | None,
    params: RankingParams,
    *,
    k: int = 6,
    exclude: tuple[str, ...] = ("books-0", "ghost-9"),
    seed: int = 7,
) -> RankRequest:
    return RankRequest(
        user=user,
        catalog=catalog,
        k=k,
        now_ms=NOW,
        exclude=exclude,
        params=params,
        seed=seed,
        propensity=PROPENSITY,
    )


# --- comparing by value -----------------------------------------------------------------


def state(value: Any) -> Any:
    """A deep, comparable image of ``value`` (arrays by bytes, NaN equal to NaN).

    A snapshot's derived-column cache is left out: filling it is allowed, and whether a
    request corrupts it is what ``test_*_leaves_no_trace`` checks.
    """
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple(
                (f.name, state(getattr(value, f.name)))
                for f in dataclasses.fields(value)
                if f.name != "_derived"
            ),
        )
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((repr(k), state(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(state(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(value)))
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return value


def slate_state(slate: Slate) -> Any:
    return state(
        {
            "score": slate.score,
            "before_cap": slate.before_cap,
            "held_back": slate.held_back,
            "order": slate.order,
            "chosen": slate.chosen,
            "explored": slate.explored,
            "excluded": None if slate.excluded is None else sorted(slate.excluded),
            "pool": slate.pool,
        }
    )


def round_trip(obj: Any) -> Any:
    again = pickle.loads(pickle.dumps(obj))
    assert type(again) is type(obj)
    assert again == obj
    return again


# --- the registries ---------------------------------------------------------------------


def all_stages() -> list[RuleStage]:
    """Each registered stage class with its defaults, and every stage of every pipeline."""
    stages: list[RuleStage] = [stage_class() for stage_class in RULE_STAGES.values()]
    for strategy in STRATEGIES.values():
        stages.extend(strategy.rules)
    return list(dict.fromkeys(stages))  # frozen dataclasses: equal stages test once


SOURCE_NAMES = sorted(cand.CANDIDATE_SOURCES)
STRATEGY_NAMES = sorted(STRATEGIES)
STAGES = all_stages()


def test_registries_are_named_by_their_entries():
    assert list(cand.CANDIDATE_SOURCES) == list(cand.SOURCES)
    for registry in (cand.CANDIDATE_SOURCES, STRATEGIES, RULE_STAGES):
        assert registry and all(entry.name == name for name, entry in registry.items())
    for name, strategy in STRATEGIES.items():
        assert strategy_for(name) is strategy
    # Names configured in ranking.strategies are hybrid blends.
    assert strategy_for(HYBRID_V1) is STRATEGIES[HYBRID]


def test_every_pipeline_is_built_from_registered_stages():
    for strategy in STRATEGIES.values():
        assert strategy.rules
        for stage in strategy.rules:
            assert isinstance(stage, tuple(RULE_STAGES.values())), stage


def test_the_package_lists_every_module():
    package = Path(serving.__file__).parent
    on_disk = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    assert set(serving.__all__) == on_disk
    for name in serving.__all__:
        importlib.import_module(f"serving.{name}")


# --- candidate sources ------------------------------------------------------------------


def context(catalog: CatalogSnapshot, user: UserFeatures | None) -> cand.CandidateContext:
    n = len(catalog)
    allowed = np.ones(n, dtype=bool)
    banned = [catalog.index_of[i] for i in ("books-5", "shoes-1") if i in catalog.index_of]
    allowed[banned] = False
    recent = user.recent_items if user is not None else []
    anchors = tuple(catalog.index_of[i] for i in recent if i in catalog.index_of)
    return cand.CandidateContext(
        user=user, catalog=catalog, now_ms=NOW, allowed=allowed, anchors=anchors
    )


def check_source_scores(name: str, ctx: cand.CandidateContext, out: cand.SourceScores) -> None:
    n = len(ctx.catalog)
    assert out.source == name
    assert out.scores.dtype == np.float64 and out.scores.shape == (n,)
    assert np.isfinite(out.scores).all()
    assert ((out.scores >= 0.0) & (out.scores <= 1.0)).all()
    assert not out.scores[~ctx.allowed].any(), "a source scored an item the rules exclude"
    for i in np.flatnonzero(out.scores).tolist():
        reason = out.reason(i)
        assert isinstance(reason, str) and reason


@pytest.mark.parametrize("catalog_name", sorted(CATALOGS))
@pytest.mark.parametrize("user_name", sorted(USERS))
@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_contract(name: str, user_name: str, catalog_name: str):
    source = cand.CANDIDATE_SOURCES[name]
    catalog, user = CATALOGS[catalog_name](), USERS[user_name]()
    ctx = context(catalog, user)
    before = state((catalog, user, ctx.allowed, ctx.anchors))

    out = source.score(ctx)
    check_source_scores(name, ctx, out)
    assert state((catalog, user, ctx.allowed, ctx.anchors)) == before, "an input was mutated"
    # Deterministic, and so is a pickled copy.
    again = round_trip(source).score(ctx)
    assert state(again.scores) == state(out.scores)
    assert [again.reason(i) for i in range(len(catalog))] == [
        out.reason(i) for i in range(len(catalog))
    ]


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_contract_on_an_empty_catalog(name: str):
    for user in (rich_user(), None):
        ctx = context(empty_catalog(), user)
        out = cand.CANDIDATE_SOURCES[name].score(ctx)
        check_source_scores(name, ctx, out)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_scores_nothing_personal_from_unknown_references(name: str):
    """A user whose interests, history and model are unknown adds no personal candidate."""
    catalog = model_catalog()
    out = cand.CANDIDATE_SOURCES[name].score(context(catalog, ghost_user()))
    bare = cand.CANDIDATE_SOURCES[name].score(context(catalog, None))
    assert state(out.scores) == state(bare.scores)


# --- ranking strategies -----------------------------------------------------------------


def check_ranking(req: RankRequest, ranking: Any) -> None:
    catalog, user = req.catalog, req.user
    ids = [item.item_id for item in ranking.items]
    assert ranking.strategy == req.params.strategy
    assert len(ids) <= max(req.k, 0) and len(set(ids)) == len(ids)
    assert all(i in catalog.index_of for i in ids)
    banned = set(req.exclude)
    # A forced fallback (store down, opted out, holdout) ignores what is known of the user.
    if user is not None and ranking.fallback_reason in ("", NO_INTERESTS):
        banned.update(user.purchased_items)
    assert banned.isdisjoint(ids), "an excluded or purchased item was ranked"
    for item in ranking.items:
        assert math.isfinite(item.score) and item.reason and item.source
        assert item.category == catalog.row_category(item.item_id)
    assert ranking.personalized == (ranking.fallback_reason == "")
    assert len(ranking.logged_features) in (0, len(ids))
    assert pickle.loads(pickle.dumps(ranking)) == ranking


@pytest.mark.parametrize("catalog_name", sorted(CATALOGS))
@pytest.mark.parametrize("user_name", sorted(USERS))
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_contract(name: str, user_name: str, catalog_name: str):
    strategy = STRATEGIES[name]
    catalog, user = CATALOGS[catalog_name](), USERS[user_name]()
    req = request(catalog, user, params_for(name))
    before = state(req)

    ranking = strategy.rank(req)
    check_ranking(req, ranking)
    # The catalog has enough eligible items: the soft caps must fill k.
    assert len(ranking.items) == req.k
    assert state(req) == before, "an input was mutated"
    assert strategy.rank(req) == ranking, "same request and seed, another ranking"
    assert round_trip(strategy).rank(req) == ranking
    # The entry point finds the strategy by the name in the parameters.
    exclude = list(req.exclude)
    assert rank(user, catalog, req.k, NOW, exclude, req.params, seed=7, propensity=PROPENSITY) == (
        ranking
    )
    assert exclude == list(req.exclude)
    if user is None:
        assert not ranking.personalized and ranking.fallback_reason


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_contract_across_seeds_and_sizes(name: str):
    catalog, params = model_catalog(), params_for(name)
    for seed in range(6):
        for k in (1, 3, 10, 40):  # 40 > the catalog: everything eligible, nothing twice
            req = request(catalog, rich_user(), params, k=k, seed=seed)
            ranking = STRATEGIES[name].rank(req)
            check_ranking(req, ranking)
            assert ranking == STRATEGIES[name].rank(req)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_contract_on_an_empty_catalog_and_k_zero(name: str):
    strategy, params = STRATEGIES[name], params_for(name)
    for user in (rich_user(), None):
        empty = strategy.rank(request(empty_catalog(), user, params))
        assert empty.items == [] and empty.fallback_reason and not empty.personalized
        if strategy.rank(request(model_catalog(), user, params)).personalized:
            assert empty.fallback_reason == CATALOG_EMPTY  # not the user's lack of signals
        none = strategy.rank(request(model_catalog(), user, params, k=0))
        assert none.items == []


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_ignores_unknown_ids(name: str):
    strategy, params, catalog = STRATEGIES[name], params_for(name), model_catalog()
    user = rich_user()
    with_ghosts = strategy.rank(request(catalog, user, params, exclude=("ghost-5", "ghost-6")))
    without = strategy.rank(request(catalog, user, params, exclude=()))
    assert with_ghosts == without
    # Recent items stay: the just-seen window counts them by position, known or not.
    known_only = dataclasses.replace(
        user,
        purchased_items=[i for i in user.purchased_items if i in catalog.index_of],
        item_impressions={i: v for i, v in user.item_impressions.items() if i in catalog.index_of},
        category_impressions={
            c: v for c, v in user.category_impressions.items() if c in catalog.code_of
        },
    )
    assert strategy.rank(request(catalog, known_only, params, exclude=())) == without


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_leaves_no_trace_in_the_catalog(name: str):
    """A request must not write into the snapshot's cached columns (a later request on
    the same snapshot would see its exclusions or fatigue)."""
    strategy, params = STRATEGIES[name], params_for(name)
    shared = model_catalog()
    for user in (rich_user(), ghost_user()):  # personalized, and not
        strategy.rank(request(shared, user, params, exclude=("garden-0", "toys-0")))
    later = request(shared, None, params, exclude=())
    fresh = request(model_catalog(), None, params, exclude=())
    assert strategy.rank(later) == strategy.rank(fresh)


def test_forced_fallback_ignores_the_user_in_every_strategy():
    catalog = model_catalog()
    for name in STRATEGY_NAMES:
        params = params_for(name)
        forced = dataclasses.replace(
            request(catalog, rich_user(), params), fallback_reason="store_unavailable"
        )
        ranking = STRATEGIES[name].rank(forced)
        assert not ranking.personalized and ranking.fallback_reason == "store_unavailable"
        anonymous = dataclasses.replace(forced, user=None)
        assert ranking == STRATEGIES[name].rank(anonymous)


# --- rule stages ------------------------------------------------------------------------

# The stages that give a slate everything later stages read (exclusions, fatigue, an
# order and a first pick).
PRELUDE = (ExclusionStage(just_seen=True), FatigueStage(), DiversityStage())


def start_slate(req: RankRequest, personalized: bool, prepared: bool) -> Slate:
    catalog = req.catalog
    # A fresh array per slate, with ties: trending plus a little interest by category.
    score = catalog.trending_relative(req.params.half_life_s).copy()
    score += 0.01 * catalog.category_codes
    if prepared:
        return run_rules(PRELUDE, req, score, personalized=personalized)
    return Slate(score, personalized)


def check_slate(req: RankRequest, slate: Slate) -> None:
    n = len(req.catalog)
    assert slate.score.shape == (n,)
    chosen = slate.chosen
    assert len(chosen) <= max(req.k, 0) and len(set(chosen)) == len(chosen)
    assert all(0 <= i < n for i in chosen)
    assert all(np.isfinite(slate.score[i]) for i in chosen), "picked an ineligible item"
    assert slate.explored <= set(chosen)
    if slate.excluded:
        assert set(slate.excluded).isdisjoint(chosen)


def stage_id(stage: RuleStage) -> str:
    return repr(stage)


@pytest.mark.parametrize("prepared", [False, True], ids=["fresh", "prepared"])
@pytest.mark.parametrize("personalized", [True, False], ids=["personal", "fallback"])
@pytest.mark.parametrize("user_name", sorted(USERS))
@pytest.mark.parametrize("stage", STAGES, ids=stage_id)
def test_stage_contract(stage: RuleStage, user_name: str, personalized: bool, prepared: bool):
    params = params_for(HYBRID)
    req = request(model_catalog(), USERS[user_name](), params)
    before = state(req)

    slate = start_slate(req, personalized, prepared)
    stage.apply(req, slate)
    check_slate(req, slate)
    assert state(req) == before, "an input was mutated"
    assert stage.depth(req) >= 0
    # Same input and seed, same slate; the same from a pickled copy of the stage.
    again = start_slate(req, personalized, prepared)
    round_trip(stage).apply(req, again)
    assert slate_state(again) == slate_state(slate)


@pytest.mark.parametrize("stage", STAGES, ids=stage_id)
def test_stage_contract_on_an_empty_catalog_and_k_zero(stage: RuleStage):
    params = params_for(HYBRID)
    for user in (rich_user(), None):
        for prepared in (False, True):
            empty = request(empty_catalog(), user, params)
            slate = start_slate(empty, True, prepared)
            stage.apply(empty, slate)
            check_slate(empty, slate)
            assert slate.chosen == []
            none = request(model_catalog(), user, params, k=0)
            slate = start_slate(none, True, prepared)
            stage.apply(none, slate)
            assert slate.chosen == []


@pytest.mark.parametrize("stage", STAGES, ids=stage_id)
def test_stage_ignores_unknown_ids(stage: RuleStage):
    params, catalog = params_for(HYBRID), model_catalog()
    known = UserFeatures(
        user_id="u",
        recent_items=["toys-0", "toys-1"],
        purchased_items=["books-6"],
        item_impressions={"shoes-0": (3, NOW), "shoes-1": (1, NOW)},
        category_impressions={"shoes": (30, NOW)},
    )
    ghosts = dataclasses.replace(
        known,
        recent_items=["toys-0", "ghost-1", "toys-1"],
        purchased_items=[*known.purchased_items, "ghost-3"],
        item_impressions={**known.item_impressions, "ghost-1": (9, NOW)},
        category_impressions={**known.category_impressions, "ghost-category": (99, NOW)},
    )
    # The just-seen window (exclude_recent=3) covers both known recent items in each.
    plain_req = request(catalog, known, params, exclude=("garden-0",))
    ghost_req = request(catalog, ghosts, params, exclude=("garden-0", "ghost-7"))
    for prepared in (False, True):
        plain, ghost = (start_slate(r, True, prepared) for r in (plain_req, ghost_req))
        stage.apply(plain_req, plain)
        stage.apply(ghost_req, ghost)
        assert slate_state(ghost) == slate_state(plain)
