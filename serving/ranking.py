"""Ranking (pure): score the whole in-process catalog for one user with numpy.

Strategy ``blend_v1``::

    score = w_interest * interest(category) * (1 + popularity_in_category)
          + w_trending * trending

- ``interest(category)``: the user's decayed interest in the item's category divided
  by their strongest interest (0..1). All of a user's scores share one reference time,
  so decaying them to ``now`` would scale them all alike and cancel here.
- ``trending``: the item's trending score decayed to ``now_ms`` exactly as
  ``flink_jobs.items.decayed_trending`` does, divided by the catalog's maximum (0..1).
- ``popularity_in_category``: the decayed trending score divided by the maximum of the
  item's category (0..1), so the best items of a liked category come first.

Business rules: purchased and explicitly excluded items never appear; when the user
has interests, at most ``ceil(k / 2)`` items per category are taken first, and only if
the catalog cannot fill ``k`` otherwise are further items of a capped category added.
A user without features (or without interests in any catalogued category) gets the
trending list, flagged ``personalized=False`` with the reason. Both kinds of strategy
apply frequency capping and fatigue from the user's impression counts
(:mod:`serving.fatigue`) to whatever list they serve a known user.

Hybrid strategies (``hybrid_v1`` and any other name configured in
``RankingSettings.strategies``)::

    score = sum over sources s of  weight[s] * normalised_score_s

over the candidate sources of :mod:`serving.candidates` (cf, covisitation, interest,
trending, content), each normalised to 0..1 within itself. Rules: purchased, excluded
and just-seen items (the user's ``exclude_recent`` most recent) never appear; at most
``ceil(k * category_cap_share)`` items per category (soft, as above); the last
``floor(k * exploration_share)`` slots go to items drawn, with a generator seeded by the
request's ``seed``, from the candidates ranked just below the top ``k``. Each item is
explained by the source contributing most to its score. A user for whom no
personal source (cf, covisitation, interest, content) has a candidate gets trending,
flagged ``no_interests``. ``blend_v1`` keeps exactly its rules above.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from personalization.settings import Settings
from serving import candidates as cand
from serving import fatigue as fatigue_mod
from serving import propensity as propensity_mod
from serving.catalog import CatalogSnapshot
from serving.online_features import UserFeatures

STRATEGY = "blend_v1"

UNKNOWN_USER = "unknown_user"
NO_INTERESTS = "no_interests"
CATALOG_EMPTY = "catalog_empty"
STORE_UNAVAILABLE = "store_unavailable"
OPTED_OUT = "opted_out"  # the user withdrew consent or was forgotten
# The holdout strategy of experiments: non-personalized (trending) for everyone.
HOLDOUT = "trending"
HOLDOUT_REASON = "holdout"

SOURCE_INTEREST = cand.INTEREST
SOURCE_TRENDING = cand.TRENDING
SOURCE_EXPLORATION = "exploration"
EXPLORATION_REASON = "something new to try"
HYBRID_V1 = "hybrid_v1"

# Items this popular within their category (relative to its best item) are explained
# as "popular in <category>" rather than "because you like <category>".
POPULAR_IN_CATEGORY = 0.5


@dataclass(frozen=True, slots=True)
class RankingParams:
    interest_weight: float = 1.0
    trending_weight: float = 0.3
    half_life_s: float = 6 * 3600.0
    # Hybrid strategies (ignored by blend_v1): see the module docstring.
    strategy: str = STRATEGY
    weights: tuple[tuple[str, float], ...] = ()  # (source, weight)
    exclude_recent: int = 3
    category_cap_share: float = 0.5
    exploration_share: float = 0.0
    exploration_pool_factor: int = 5
    recency_decay: float = 0.7
    anchor_items: int = 5
    fatigue: fatigue_mod.FatigueRules = field(default_factory=fatigue_mod.FatigueRules)

    @classmethod
    def from_settings(cls, settings: Settings, strategy: str | None = None) -> RankingParams:
        """Parameters of ``strategy`` (default: ``ranking.strategy``)."""
        cfg = settings.ranking
        name = strategy or cfg.strategy
        weights: tuple[tuple[str, float], ...] = ()
        if name not in (STRATEGY, HOLDOUT):
            if name not in cfg.strategies:
                raise ValueError(
                    f"ranking strategy {name!r} is neither {STRATEGY!r}, {HOLDOUT!r} nor one "
                    f"of {sorted(cfg.strategies)}"
                )
            unknown = set(cfg.strategies[name]) - set(cand.BLEND_TERMS)
            if unknown:
                raise ValueError(f"unknown candidate sources {sorted(unknown)}")
            weights = tuple(sorted(cfg.strategies[name].items()))
        return cls(
            interest_weight=settings.serving.interest_weight,
            trending_weight=settings.serving.trending_weight,
            half_life_s=settings.features.trending_half_life_s,
            strategy=name,
            weights=weights,
            exclude_recent=cfg.exclude_recent,
            category_cap_share=cfg.category_cap_share,
            exploration_share=cfg.exploration_share,
            exploration_pool_factor=cfg.exploration_pool_factor,
            recency_decay=cfg.recency_decay,
            anchor_items=cfg.anchor_items,
            fatigue=fatigue_mod.FatigueRules(
                window_ms=settings.features.impression_window_s * 1000,
                max_item_impressions=cfg.max_item_impressions,
                item_fatigue=cfg.item_fatigue,
                category_fatigue=cfg.category_fatigue,
                category_fatigue_free=cfg.category_fatigue_free,
            ),
        )


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: str
    score: float
    reason: str
    category: str
    source: str


@dataclass(frozen=True, slots=True)
class Ranking:
    items: list[RankedItem]
    strategy: str
    personalized: bool
    fallback_reason: str  # "" when personalized
    # Per item, the features it was ranked with (hybrid strategies; logged with the
    # exposure as training data of the propensity model).
    logged_features: list[dict[str, float]] = field(default_factory=list)


def _normalised(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    if top <= 0.0:
        return np.zeros_like(values)
    return values / top


def _interest_by_code(user: UserFeatures, catalog: CatalogSnapshot) -> np.ndarray:
    by_code = np.zeros(len(catalog.categories), dtype=np.float64)
    for category, score in user.interests:
        code = catalog.code_of.get(category)
        if code is not None and score > 0 and math.isfinite(score):
            by_code[code] = max(by_code[code], score)
    return _normalised(by_code)


def _select(order: np.ndarray, codes: np.ndarray, k: int, per_category_cap: int) -> list[int]:
    """Greedy top-k over ``order`` (best first) with a soft per-category cap."""
    chosen: list[int] = []
    skipped: list[int] = []
    taken: dict[int, int] = {}
    for i in order.tolist():
        code = int(codes[i])
        if taken.get(code, 0) >= per_category_cap:
            skipped.append(i)
            continue
        taken[code] = taken.get(code, 0) + 1
        chosen.append(i)
        if len(chosen) == k:
            return chosen
    chosen.extend(skipped[: k - len(chosen)])
    return chosen


# Catalogs at least this large pre-filter with a sampled threshold (see _top_indices).
_SAMPLED_TOP_MIN_ITEMS = 4096
_SAMPLE_STRIDE = 16


def _top_indices(score: np.ndarray, pool: int) -> np.ndarray:
    """Indices of the ``pool`` highest scores, in no particular order.

    A full ``argpartition`` over a 10,000-item catalog was the largest single cost of a
    request (~80 µs). Instead: estimate the score of about the ``2 * pool``-th item from
    every ``_SAMPLE_STRIDE``-th score, keep the items at or above it (one vectorised
    comparison) and partition only those. The result is exact: when the estimate keeps
    fewer than ``pool`` items, the full partition runs.
    """
    n = score.shape[0]
    if pool >= n:
        return np.arange(n)
    if n >= _SAMPLED_TOP_MIN_ITEMS:
        sample = score[::_SAMPLE_STRIDE]
        m = sample.shape[0]
        rank_in_sample = 2 * pool // _SAMPLE_STRIDE + 1
        if rank_in_sample < m:
            threshold = np.partition(sample, m - rank_in_sample)[m - rank_in_sample]
            kept = np.flatnonzero(score >= threshold)
            if kept.shape[0] >= pool:
                if kept.shape[0] == pool:
                    return kept
                best = np.argpartition(score[kept], kept.shape[0] - pool)
                return kept[best[kept.shape[0] - pool :]]
    return np.argpartition(score, n - pool)[n - pool :]


def _ordered_candidates(score: np.ndarray, pool: int) -> np.ndarray:
    """Indices of the ``pool`` best finite scores, best first (ties: lower index first)."""
    # Banned items are -inf: they sink below any pool without a separate filter pass
    # over the whole catalog (what remains of them is dropped from the small pool).
    top = _top_indices(score, pool)
    top = top[np.isfinite(score[top])]
    # lexsort: last key is primary; index as a tie-break keeps results deterministic.
    return top[np.lexsort((top, -score[top]))]


def _refill_capped(
    chosen: list[int], score: np.ndarray, uncapped: np.ndarray, fatigue: fatigue_mod.Fatigue, k: int
) -> list[int]:
    """The frequency cap is soft: capped items fill a list nothing else can fill, and
    keep their score before the cap (``score`` is updated in place for them)."""
    filled = fatigue_mod.refill(chosen, uncapped, fatigue.capped, k)
    extra = filled[len(chosen) :]
    if extra:
        score[extra] = uncapped[extra]
    return filled


def rank(
    user: UserFeatures | None,
    catalog: CatalogSnapshot,
    k: int,
    now_ms: int,
    exclude: Iterable[str] = (),
    params: RankingParams = RankingParams(),
    *,
    fallback_reason: str = "",
    seed: int = 0,
    propensity: propensity_mod.PropensityModel | None = None,
) -> Ranking:
    """Top ``k`` catalog items for ``user`` (None = unknown: trending fallback).

    ``fallback_reason`` forces the non-personalized list with that reason (used when
    the online store is down and the user's features are unknowable). ``seed`` makes
    a hybrid strategy's exploration picks reproducible per request.
    """
    if params.strategy == HOLDOUT:
        holdout = rank(
            user,
            catalog,
            k,
            now_ms,
            exclude,
            replace(params, strategy=STRATEGY),
            fallback_reason=fallback_reason or HOLDOUT_REASON,
            seed=seed,
        )
        return replace(holdout, strategy=HOLDOUT)
    if params.strategy != STRATEGY:
        return rank_hybrid(
            user,
            catalog,
            k,
            now_ms,
            exclude,
            params,
            fallback_reason=fallback_reason,
            seed=seed,
            propensity=propensity,
        )
    if fallback_reason:
        user = None  # a forced fallback ignores whatever is known about the user
    elif user is None:
        fallback_reason = UNKNOWN_USER
    n = len(catalog)
    if n == 0 or k <= 0:
        reason = fallback_reason or (CATALOG_EMPTY if n == 0 else "")
        return Ranking([], STRATEGY, personalized=not reason, fallback_reason=reason)

    codes = catalog.category_codes
    half_life, trending_weight = params.half_life_s, params.trending_weight
    # Per snapshot, not per request: decay to now would scale every score alike and
    # normalising divides it out again.
    trend_part = catalog.column(
        f"blend_trend:{half_life}:{trending_weight}",
        lambda c: trending_weight * _normalised(c.trending_relative(half_life)),
    )

    interest = (
        _interest_by_code(user, catalog) if user is not None else np.zeros(len(catalog.categories))
    )
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
        score = trend_part.copy()

    banned = set(exclude)
    if user is not None:
        banned.update(user.purchased_items)
    banned_idx = [catalog.index_of[i] for i in banned if i in catalog.index_of]
    if banned_idx:
        score[banned_idx] = -np.inf
    fatigue = fatigue_mod.fatigue_for(user, catalog, now_ms, params.fatigue)
    uncapped = score
    score = fatigue_mod.apply(score, fatigue)

    cap = math.ceil(k / 2) if personalized else k
    # A pool a few times k is almost always enough to satisfy the cap; if not, use all.
    order = _ordered_candidates(score, pool=max(4 * k, k + 32))
    chosen = _select(order, codes, k, cap)
    if len(chosen) < k and order.size < np.isfinite(score).sum():
        chosen = _select(_ordered_candidates(score, pool=n), codes, k, cap)
    chosen = _refill_capped(chosen, score, uncapped, fatigue, k)

    items = []
    for i in chosen:
        category = catalog.categories[codes[i]]
        if personalized and interest_part[i] > trend_part[i]:
            source = SOURCE_INTEREST
            if not category:
                reason = "recommended for you"
            elif popularity[i] >= POPULAR_IN_CATEGORY:
                reason = f"popular in {category}"
            else:
                reason = f"because you like {category}"
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
    return Ranking(items, STRATEGY, personalized=personalized, fallback_reason=fallback_reason)


# --- hybrid strategies ----------------------------------------------------------------


def _banned_positions(
    user: UserFeatures | None, catalog: CatalogSnapshot, exclude: Iterable[str], recent: int
) -> list[int]:
    banned = set(exclude)
    if user is not None:
        banned.update(user.purchased_items)
        if recent > 0:
            banned.update(user.recent_items[:recent])
    index_of = catalog.index_of
    return [index_of[i] for i in banned if i in index_of]


def _explore(
    chosen: list[int], order: np.ndarray, slots: int, pool: int, seed: int
) -> tuple[list[int], set[int]]:
    """Replace the last ``slots`` picks with seeded draws from the next ``pool`` ranked."""
    taken = set(chosen)
    rest = [i for i in order[: len(chosen) + pool].tolist() if i not in taken]
    slots = min(slots, len(rest), len(chosen))
    if slots <= 0:
        return chosen, set()
    picks = random.Random(seed).sample(rest, slots)
    return chosen[: len(chosen) - slots] + picks, set(picks)


def rank_hybrid(
    user: UserFeatures | None,
    catalog: CatalogSnapshot,
    k: int,
    now_ms: int,
    exclude: Iterable[str] = (),
    params: RankingParams = RankingParams(strategy=HYBRID_V1),
    *,
    fallback_reason: str = "",
    seed: int = 0,
    propensity: propensity_mod.PropensityModel | None = None,
) -> Ranking:
    """Blend of the candidate sources weighted by ``params.weights`` (see module doc)."""
    strategy = params.strategy
    if fallback_reason:
        user = None
    elif user is None:
        fallback_reason = UNKNOWN_USER
    n = len(catalog)
    if n == 0 or k <= 0:
        reason = fallback_reason or (CATALOG_EMPTY if n == 0 else "")
        return Ranking([], strategy, personalized=not reason, fallback_reason=reason)

    allowed = np.ones(n, dtype=bool)
    banned = _banned_positions(user, catalog, exclude, params.exclude_recent)
    if banned:
        allowed[banned] = False
    recent = user.recent_items[: params.anchor_items] if user is not None else []
    anchors = tuple(catalog.index_of[i] for i in recent if i in catalog.index_of)
    ctx = cand.CandidateContext(
        user=user,
        catalog=catalog,
        now_ms=now_ms,
        allowed=allowed,
        anchors=anchors,
        recency_decay=params.recency_decay,
        trending_half_life_s=params.half_life_s,
    )
    weights = dict(params.weights) if user is not None else {}
    sources = cand.score_sources(ctx, weights)
    personalized = any(s.source != cand.TRENDING and s.scores.any() for s in sources)
    if not personalized:
        fallback_reason = fallback_reason or NO_INTERESTS
        weights = {cand.TRENDING: 1.0}
        sources = cand.score_sources(ctx, weights)
    columns = propensity_mod.feature_columns(
        sources, catalog, user, params.fatigue.max_item_impressions
    )
    if weights.get(cand.PROPENSITY, 0.0) > 0 and propensity is not None:
        p_click = np.where(allowed, propensity.score(columns), 0.0)
        sources = [*sources, cand.SourceScores(cand.PROPENSITY, p_click)]
    # Summed in place (no [sources x n] matrix per request); contributions are only
    # needed for the k items picked, to explain them.
    score = np.zeros(n, dtype=np.float64)
    for s in sources:
        score += weights[s.source] * s.scores
    if banned:
        score[banned] = -np.inf
    fatigue = fatigue_mod.fatigue_for(user, catalog, now_ms, params.fatigue)
    uncapped = score
    score = fatigue_mod.apply(score, fatigue)

    codes = catalog.category_codes
    cap = max(1, math.ceil(k * params.category_cap_share)) if personalized else k
    slots = math.floor(k * params.exploration_share) if personalized else 0
    explore_pool = k * max(1, params.exploration_pool_factor)
    order = _ordered_candidates(score, pool=max(4 * k, k + 32, k + explore_pool))
    chosen = _select(order, codes, k, cap)
    if len(chosen) < k and order.size < np.isfinite(score).sum():
        order = _ordered_candidates(score, pool=n)
        chosen = _select(order, codes, k, cap)
    explored: set[int] = set()
    if slots:
        chosen, explored = _explore(chosen, order, slots, explore_pool, seed)
    chosen = _refill_capped(chosen, score, uncapped, fatigue, k)

    picked = np.array([weights[s.source] * s.scores[chosen] for s in sources])
    dominant = picked.argmax(axis=0).tolist()
    items = []
    for column, i in enumerate(chosen):
        category = catalog.categories[codes[i]]
        best = dominant[column]
        if i in explored:
            source, reason = SOURCE_EXPLORATION, EXPLORATION_REASON
        else:
            if picked[best, column] > 0:
                source, reason = sources[best].source, sources[best].reason(i)
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
    return Ranking(
        items,
        strategy,
        personalized=personalized,
        fallback_reason=fallback_reason,
        logged_features=columns.rows(chosen),
    )
