"""What ranking is asked and what it answers: parameters, the request, the ranking.

Shared by the three roles of ranking (candidate sources, strategies, rule stages) so
none of them imports another's module for its vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from personalization.settings import LEARNED_BLEND, Settings
from serving import candidates as cand
from serving import fatigue as fatigue_mod
from serving import propensity as propensity_mod
from serving.catalog_snapshot import CatalogSnapshot
from serving.context_trending import ContextQuery
from serving.online_features import UserFeatures

__all__ = [
    "CATALOG_EMPTY",
    "EXPLORATION_REASON",
    "FIXED_STRATEGIES",
    "HOLDOUT",
    "HOLDOUT_REASON",
    "HYBRID",
    "HYBRID_V1",
    "LEARNED",
    "NO_INTERESTS",
    "OPTED_OUT",
    "POPULAR_IN_CATEGORY",
    "SOURCE_EXPLORATION",
    "SOURCE_INTEREST",
    "SOURCE_TRENDING",
    "STORE_UNAVAILABLE",
    "STRATEGY",
    "UNKNOWN_USER",
    "RankRequest",
    "RankedItem",
    "Ranking",
    "RankingParams",
]

STRATEGY = "blend_v1"
# The holdout strategy of experiments: non-personalized (trending) for everyone.
HOLDOUT = "trending"
# The registry's entry for weighted blends of the candidate sources; every strategy
# configured in ``ranking.strategies`` (hybrid_v1, hybrid_v2, ...) is one.
HYBRID = "hybrid"
HYBRID_V1 = "hybrid_v1"
# The candidate sources blended by the learned ranking head (serving/strategies.py);
# ``ranking.strategies[LEARNED]`` holds its prior, the blend used until a model exists.
LEARNED = LEARNED_BLEND
# Strategies whose rules are fixed in code: they take no weights from the settings.
FIXED_STRATEGIES = (STRATEGY, HOLDOUT)

UNKNOWN_USER = "unknown_user"
NO_INTERESTS = "no_interests"
CATALOG_EMPTY = "catalog_empty"
STORE_UNAVAILABLE = "store_unavailable"
OPTED_OUT = "opted_out"  # the user withdrew consent or was forgotten
HOLDOUT_REASON = "holdout"

SOURCE_INTEREST = cand.INTEREST
SOURCE_TRENDING = cand.TRENDING
SOURCE_EXPLORATION = "exploration"
EXPLORATION_REASON = "something new to try"

# Items this popular within their category (relative to its best item) are explained
# as "popular in <category>" rather than "because you like <category>".
POPULAR_IN_CATEGORY = cand.POPULAR_IN_CATEGORY


@dataclass(frozen=True, slots=True)
class RankingParams:
    interest_weight: float = 1.0
    trending_weight: float = 0.3
    half_life_s: float = 6 * 3600.0
    # Hybrid strategies (ignored by blend_v1): see serving/strategies.py.
    strategy: str = STRATEGY
    weights: tuple[tuple[str, float], ...] = ()  # (source, weight)
    exclude_recent: int = 3
    category_cap_share: float = 0.5
    exploration_share: float = 0.0
    exploration_pool_factor: int = 5
    recency_decay: float = 0.7
    anchor_items: int = 5
    cf_confidence_events: int = 5
    learned_head_min_pairs: int = 200
    fatigue: fatigue_mod.FatigueRules = field(default_factory=fatigue_mod.FatigueRules)
    # Score every candidate source for the logged features even where the strategy
    # weighs fewer (serving always does; an offline replay of a fixed blend need not).
    log_features: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, strategy: str | None = None) -> RankingParams:
        """Parameters of ``strategy`` (default: ``ranking.strategy``)."""
        cfg = settings.ranking
        name = strategy or cfg.strategy
        weights: tuple[tuple[str, float], ...] = ()
        if name not in FIXED_STRATEGIES:
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
            cf_confidence_events=cfg.cf_confidence_events,
            learned_head_min_pairs=cfg.learned_head_min_pairs,
            fatigue=fatigue_mod.FatigueRules(
                window_ms=settings.features.impression_window_s * 1000,
                max_item_impressions=cfg.max_item_impressions,
                item_fatigue=cfg.item_fatigue,
                category_fatigue=cfg.category_fatigue,
                category_fatigue_free=cfg.category_fatigue_free,
            ),
        )


@dataclass(frozen=True, slots=True)
class RankRequest:
    """One ranking question; strategies and rule stages read it and never change it.

    ``fallback_reason`` forces the non-personalized list with that reason (the online
    store is down, the user opted out); ``seed`` makes exploration reproducible.
    """

    user: UserFeatures | None  # None = unknown to the online store
    catalog: CatalogSnapshot
    k: int
    now_ms: int
    exclude: tuple[str, ...] = ()
    params: RankingParams = field(default_factory=RankingParams)
    fallback_reason: str = ""
    seed: int = 0
    propensity: propensity_mod.PropensityModel | None = None
    # The request's country / device: trending of that context where it has enough data.
    context: ContextQuery | None = None


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
    # Every catalog item's ranking features (None for lists without them): what the
    # offline replay trains the learned blend on, so it learns from what was ranked.
    features: propensity_mod.FeatureColumns | None = field(default=None, compare=False, repr=False)
