"""Ranking strategies (pure): score the whole catalog for one request, then the rules.

Every strategy implements :class:`RankingStrategy`: ``strategy.rank(request) ->
Ranking``, scoring with numpy over the in-process catalog, passing the scores through
its pipeline of rule stages (``strategy.rules``, see :mod:`serving.rules`) and
explaining each picked item. :data:`STRATEGIES` registers them by name and
:func:`strategy_for` looks one up; ``tests/unit/test_serving_contracts.py`` runs one
contract over every entry.

A user without features, or one the strategy finds nothing personal for, gets the
trending list flagged ``personalized=False`` with the reason; so does a request whose
``fallback_reason`` is forced (store down, opted out), which ignores whatever is known
about the user, their exclusions and impressions included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from serving import candidates as cand
from serving import propensity as propensity_mod
from serving.catalog_snapshot import CatalogSnapshot
from serving.context_trending import context_trending
from serving.ranking_types import (
    CATALOG_EMPTY,
    EXPLORATION_REASON,
    HOLDOUT,
    HOLDOUT_REASON,
    HYBRID,
    LEARNED,
    NO_INTERESTS,
    POPULAR_IN_CATEGORY,
    SOURCE_EXPLORATION,
    SOURCE_INTEREST,
    SOURCE_TRENDING,
    STRATEGY,
    UNKNOWN_USER,
    RankedItem,
    Ranking,
    RankRequest,
)
from serving.rules import (
    CapRefillStage,
    DiversityStage,
    ExclusionStage,
    ExplorationStage,
    FatigueStage,
    RuleStage,
    SourceExplorationStage,
    run_rules,
)

__all__ = [
    "STRATEGIES",
    "BlendStrategy",
    "HoldoutStrategy",
    "HybridStrategy",
    "LearnedStrategy",
    "RankingStrategy",
    "strategy_for",
]


class RankingStrategy(Protocol):
    """The role of a ranking strategy: the top ``request.k`` items for one request.

    ``rank`` reads the request (user, catalog, exclusions) and never changes it; the
    same request, seed included, gives the same ranking. At most ``k`` distinct
    catalogued items, none excluded, each with a finite score and a reason.
    Strategies are stateless, so they pickle.
    """

    @property
    def name(self) -> str: ...

    @property
    def rules(self) -> tuple[RuleStage, ...]:
        """The rule pipeline this strategy passes its scores through."""
        ...

    def rank(self, request: RankRequest) -> Ranking: ...


# Weight of global trending beside a context's own list (serving/context_trending.py):
# small, so it only orders the items the context has no data on and fills the list.
_GLOBAL_UNDER_CONTEXT = 0.01


def _normalised(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    if top <= 0.0:
        return np.zeros_like(values)
    return values / top


def _with_fallback(request: RankRequest) -> tuple[RankRequest, str]:
    """The request as the strategy sees it and the fallback reason so far."""
    if request.fallback_reason:
        if request.user is not None:
            # A forced fallback ignores whatever is known about the user.
            request = dataclasses.replace(request, user=None)
        return request, request.fallback_reason
    return request, UNKNOWN_USER if request.user is None else ""


def _nothing_to_rank(strategy: str, n: int, fallback_reason: str) -> Ranking:
    reason = fallback_reason or (CATALOG_EMPTY if n == 0 else "")
    return Ranking([], strategy, personalized=not reason, fallback_reason=reason)


# Every candidate source, for the features every strategy logs and the learned blend.
_EVERY_SOURCE = dict.fromkeys(cand.SOURCES, 1.0)


def _context(
    request: RankRequest, exclusion: ExclusionStage
) -> tuple[cand.CandidateContext, list[int]]:
    """What the candidate sources see for ``request``, and the positions ``exclusion``
    bans (the sources score none of them)."""
    user, catalog, params = request.user, request.catalog, request.params
    excluded = exclusion.positions(request)
    allowed = np.ones(len(catalog), dtype=bool)
    if excluded:
        allowed[excluded] = False
    recent = user.recent_items[: params.anchor_items] if user is not None else []
    anchors = tuple(catalog.index_of[i] for i in recent if i in catalog.index_of)
    ctx = cand.CandidateContext(
        user=user,
        catalog=catalog,
        now_ms=request.now_ms,
        allowed=allowed,
        anchors=anchors,
        recency_decay=params.recency_decay,
        cf_confidence_events=params.cf_confidence_events,
        trending_half_life_s=params.half_life_s,
        context_trending=context_trending(catalog, request.context, params.half_life_s),
    )
    return ctx, excluded


def _every_source(
    ctx: cand.CandidateContext, scored: list[cand.SourceScores]
) -> list[cand.SourceScores]:
    """``scored`` completed with the sources it lacks, in :data:`cand.SOURCES` order."""
    have = {s.source: s for s in scored}
    missing = {name: 1.0 for name in cand.SOURCES if name not in have}
    have.update((s.source, s) for s in cand.score_sources(ctx, missing))
    return [have[name] for name in cand.SOURCES]


def _logged_columns(
    request: RankRequest, ctx: cand.CandidateContext, scored: list[cand.SourceScores]
) -> propensity_mod.FeatureColumns:
    """The features of every item, all sources scored, whatever the strategy weighs:
    exposures log them under every strategy, so the learned head always has examples
    and sees the same features whichever strategy showed the item."""
    return propensity_mod.feature_columns(
        _every_source(ctx, scored),
        request.catalog,
        request.user,
        request.params.fatigue.max_item_impressions,
    )


def _explained(
    catalog: CatalogSnapshot,
    sources: list[cand.SourceScores],
    weights: Mapping[str, float],
    slate_chosen: list[int],
    explored: set[int],
    score: np.ndarray,
) -> list[RankedItem]:
    """The picked items, each explained by the source contributing most to its score."""
    codes = catalog.category_codes
    weighed = [s for s in sources if weights.get(s.source, 0.0) > 0]
    picked = (
        np.array([weights[s.source] * s.scores[slate_chosen] for s in weighed])
        if weighed
        else np.zeros((0, len(slate_chosen)))
    )
    dominant = picked.argmax(axis=0).tolist() if weighed else [0] * len(slate_chosen)
    items = []
    for column, i in enumerate(slate_chosen):
        category = catalog.categories[codes[i]]
        best = dominant[column]
        if i in explored:
            source, reason = SOURCE_EXPLORATION, EXPLORATION_REASON
        elif weighed and picked[best, column] > 0:
            source, reason = weighed[best].source, weighed[best].reason(i)
        else:
            source, reason = SOURCE_TRENDING, "trending now"
        items.append(
            RankedItem(
                item_id=catalog.item_ids[i],
                score=float(score[i]),
                reason=reason,
                category=category,
                source=source,
            )
        )
    return items


_BLEND_EXCLUSION = ExclusionStage(just_seen=False)


@dataclass(frozen=True, slots=True)
class BlendStrategy:
    """``blend_v1``: interest in the item's category blended with trending::

        score = w_interest * interest(category) * (1 + popularity_in_category)
              + w_trending * trending

    - ``interest(category)``: the user's decayed interest in the item's category divided
      by their strongest interest (0..1). All of a user's scores share one reference
      time, so decaying them to ``now`` would scale them all alike and cancel here.
    - ``trending``: the item's trending score decayed exactly as
      ``flink_jobs.items.decayed_trending`` does, divided by the catalog's maximum
      (0..1).
    - ``popularity_in_category``: the decayed trending score divided by the maximum of
      the item's category (0..1), so the best items of a liked category come first.

    Rules: purchased and excluded items never appear; fatigue and the frequency cap;
    when the user has interests at most ``ceil(k / 2)`` items per category (soft). A
    user without interests in any catalogued category gets trending, ``no_interests``.
    """

    name: ClassVar[str] = STRATEGY
    rules: ClassVar[tuple[RuleStage, ...]] = (
        _BLEND_EXCLUSION,
        FatigueStage(),
        DiversityStage(share=0.5),
        CapRefillStage(),
    )

    def rank(self, request: RankRequest) -> Ranking:
        request, fallback_reason = _with_fallback(request)
        user, catalog, params = request.user, request.catalog, request.params
        n = len(catalog)
        if n == 0 or request.k <= 0:
            return _nothing_to_rank(STRATEGY, n, fallback_reason)

        codes = catalog.category_codes
        half_life, trending_weight = params.half_life_s, params.trending_weight
        # Per snapshot, not per request: decay to now would scale every score alike and
        # normalising divides it out again.
        trend_part = catalog.column(
            f"blend_trend:{half_life}:{trending_weight}",
            lambda c: trending_weight * _normalised(c.trending_relative(half_life)),
        )
        # The request's context (country, device) with enough data of its own: its
        # trending list leads, global trending only orders what it has not seen.
        local = context_trending(catalog, request.context, half_life)
        if local is not None:
            trend_part = trending_weight * local[0] + _GLOBAL_UNDER_CONTEXT * trend_part
        interest = cand.interest_by_code(user, catalog)
        personalized = bool(interest.any())
        popularity = interest_part = np.zeros_like(trend_part)
        if personalized:
            popularity = catalog.category_popularity(half_life)
            boost = catalog.column(
                f"blend_popularity_boost:{half_life}",
                lambda c: 1.0 + c.category_popularity(half_life),
            )
            # Weighted per category first (a few entries), then gathered per item.
            interest_part = (params.interest_weight * interest)[codes] * boost
            score = interest_part + trend_part
        else:
            fallback_reason = fallback_reason or NO_INTERESTS
            score = trend_part.copy()  # the rules write it; the cached column stays

        slate = run_rules(self.rules, request, score, personalized=personalized)
        score = slate.score
        items = []
        for i in slate.chosen:
            category = catalog.categories[codes[i]]
            if personalized and interest_part[i] > trend_part[i]:
                source = SOURCE_INTEREST
                if not category:
                    reason = "recommended for you"
                elif popularity[i] >= POPULAR_IN_CATEGORY:
                    reason = f"popular in {category}"
                else:
                    reason = f"because you like {category}"
            elif local is not None and local[0][i] > 0:
                source, reason = SOURCE_TRENDING, local[1]  # "popular in DE", ...
            else:
                source, reason = SOURCE_TRENDING, "trending now"
            items.append(
                RankedItem(
                    item_id=catalog.item_ids[i],
                    score=float(score[i]),
                    reason=reason,
                    category=category,
                    source=source,
                )
            )
        # The features every strategy logs (the learned head's examples), scored over
        # the items this blend's own exclusion allows.
        if not params.log_features:
            return Ranking(
                items, STRATEGY, personalized=personalized, fallback_reason=fallback_reason
            )
        ctx, _ = _context(request, _BLEND_EXCLUSION)
        columns = _logged_columns(request, ctx, [])
        return Ranking(
            items,
            STRATEGY,
            personalized=personalized,
            fallback_reason=fallback_reason,
            logged_features=columns.rows(slate.chosen),
            features=columns,
        )


# The exclusion stage of hybrid strategies: its positions also mask the sources.
_JUST_SEEN = ExclusionStage(just_seen=True)


@dataclass(frozen=True, slots=True)
class HybridStrategy:
    """Weighted blend of the candidate sources (``hybrid_v1`` and every other name
    configured in ``ranking.strategies``)::

        score = sum over sources s of  weight[s] * normalised_score_s

    over the sources of :mod:`serving.candidates` (cf, covisitation, interest,
    trending, content, and the learned click propensity when weighted), each normalised
    to 0..1 within itself over the items the exclusion rule allows. Rules: purchased,
    excluded and just-seen items (the user's ``exclude_recent`` most recent) never
    appear; fatigue and the frequency cap; at most ``ceil(k * category_cap_share)`` items
    per category (soft); the last ``floor(k * exploration_share)`` slots explore. Each
    item is explained by the source contributing most to its score. A user for whom no
    personal source has a candidate gets trending, flagged ``no_interests``.
    """

    name: ClassVar[str] = HYBRID
    rules: ClassVar[tuple[RuleStage, ...]] = (
        _JUST_SEEN,
        FatigueStage(),
        DiversityStage(),
        ExplorationStage(),
        CapRefillStage(),
    )

    def rank(self, request: RankRequest) -> Ranking:
        request, fallback_reason = _with_fallback(request)
        user, catalog, params = request.user, request.catalog, request.params
        strategy = params.strategy
        n = len(catalog)
        if n == 0 or request.k <= 0:
            return _nothing_to_rank(strategy, n, fallback_reason)

        ctx, excluded = _context(request, _JUST_SEEN)
        allowed = ctx.allowed
        weights = dict(params.weights) if user is not None else {}
        sources = cand.score_sources(ctx, weights)
        personalized = any(s.source != cand.TRENDING and s.scores.any() for s in sources)
        if not personalized:
            fallback_reason = fallback_reason or NO_INTERESTS
            weights = {cand.TRENDING: 1.0}
            sources = cand.score_sources(ctx, weights)
        columns = (
            _logged_columns(request, ctx, sources)
            if params.log_features
            else propensity_mod.feature_columns(
                sources, catalog, user, params.fatigue.max_item_impressions
            )
        )
        if weights.get(cand.PROPENSITY, 0.0) > 0 and request.propensity is not None:
            p_click = np.where(allowed, request.propensity.score(columns), 0.0)
            sources = [*sources, cand.SourceScores(cand.PROPENSITY, p_click)]
        # Summed in place (no [sources x n] matrix per request); contributions are only
        # needed for the k items picked, to explain them.
        score = np.zeros(n, dtype=np.float64)
        for s in sources:
            score += weights[s.source] * s.scores

        slate = run_rules(self.rules, request, score, personalized=personalized, excluded=excluded)
        items = _explained(catalog, sources, weights, slate.chosen, slate.explored, slate.score)
        return Ranking(
            items,
            strategy,
            personalized=personalized,
            fallback_reason=fallback_reason,
            logged_features=columns.rows(slate.chosen),
            features=columns,
        )


@dataclass(frozen=True, slots=True)
class LearnedStrategy:
    """``learned_v1``: the candidate sources blended by a learned ranking head::

        score = head.linear(features)   (log-odds; serving/propensity.py)

    over every source's normalised score (``src_<source>``), price, times shown and
    the user flags. The head is the request's model: in serving the click propensity
    the job learns from exposures -> clicks (``flink_jobs/propensity.py``), in the
    offline replay the same learner trained test-then-train on the stream
    (``analysis/evaluation.py``). Until one exists it is the prior,
    ``ranking.strategies["learned_v1"]`` read as weights of the ``src_`` features.

    Rules as the hybrid blends, except exploration: its slots go to candidate sources
    drawn at random (``source_exploration``), so every source's items get outcomes.
    Each item is explained by the source whose learned weight contributes most.
    """

    name: ClassVar[str] = LEARNED
    rules: ClassVar[tuple[RuleStage, ...]] = (
        _JUST_SEEN,
        FatigueStage(),
        DiversityStage(),
        SourceExplorationStage(),
        CapRefillStage(),
    )

    def rank(self, request: RankRequest) -> Ranking:
        request, fallback_reason = _with_fallback(request)
        user, catalog, params = request.user, request.catalog, request.params
        n = len(catalog)
        if n == 0 or request.k <= 0:
            return _nothing_to_rank(params.strategy, n, fallback_reason)

        ctx, excluded = _context(request, _JUST_SEEN)
        sources = cand.score_sources(ctx, _EVERY_SOURCE)
        columns = propensity_mod.feature_columns(
            sources, catalog, user, params.fatigue.max_item_impressions
        )
        personalized = user is not None and any(
            s.source != cand.TRENDING and s.scores.any() for s in sources
        )
        if personalized:
            head = request.propensity
            if head is None or not head.beats_prior(params.learned_head_min_pairs):
                head = propensity_mod.PropensityModel.prior(dict(params.weights))
            weights = {s: head.weights.get(f"src_{s}", 0.0) for s in cand.SOURCES}
            score = head.linear(columns)
        else:
            fallback_reason = fallback_reason or NO_INTERESTS
            weights = {cand.TRENDING: 1.0}
            score = columns.items[f"src_{cand.TRENDING}"].copy()

        slate = run_rules(
            self.rules,
            request,
            score,
            personalized=personalized,
            excluded=excluded,
            sources={s.source: s.scores for s in sources if weights.get(s.source, 0.0) > 0}
            if personalized
            else None,
        )
        items = _explained(catalog, sources, weights, slate.chosen, slate.explored, slate.score)
        return Ranking(
            items,
            params.strategy,
            personalized=personalized,
            fallback_reason=fallback_reason,
            logged_features=columns.rows(slate.chosen),
            features=columns,
        )


_BLEND = BlendStrategy()


@dataclass(frozen=True, slots=True)
class HoldoutStrategy:
    """The holdout of experiments: ``blend_v1``'s non-personalized (trending) list for
    everyone, flagged ``holdout`` unless another fallback reason applies."""

    name: ClassVar[str] = HOLDOUT
    rules: ClassVar[tuple[RuleStage, ...]] = BlendStrategy.rules

    def rank(self, request: RankRequest) -> Ranking:
        forced = dataclasses.replace(
            request, fallback_reason=request.fallback_reason or HOLDOUT_REASON
        )
        return dataclasses.replace(_BLEND.rank(forced), strategy=HOLDOUT)


_HYBRID = HybridStrategy()

STRATEGIES: Mapping[str, RankingStrategy] = {
    strategy.name: strategy for strategy in (_BLEND, HoldoutStrategy(), _HYBRID, LearnedStrategy())
}


def strategy_for(name: str) -> RankingStrategy:
    """The strategy registered as ``name``; any other name is a hybrid blend whose
    weights ``ranking.strategies[name]`` configures (``RankingParams.weights``)."""
    return STRATEGIES.get(name) or _HYBRID
