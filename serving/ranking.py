"""Ranking (pure): the top ``k`` catalog items for one user, scored with numpy.

Three roles, each one small interface with a registry and a shared contract test
(``tests/unit/test_serving_contracts.py``):

- candidate sources (:mod:`serving.candidates`, ``CandidateSource``): cf,
  covisitation, interest, trending, content, each a 0..1 score per catalog item;
- ranking strategies (:mod:`serving.strategies`, ``RankingStrategy``): ``blend_v1``,
  the ``trending`` holdout and the hybrid blends of the candidate sources named in
  ``ranking.strategies``; looked up by ``RankingParams.strategy``;
- rule stages (:mod:`serving.rules`, ``RuleStage``): exclusion, fatigue and the
  frequency cap, diversity, exploration, the cap's refill, run in order over the
  strategy's scores.

:func:`rank` is the entry point; the names of :mod:`serving.ranking_types` are
re-exported here, where callers have always found them.
"""

from __future__ import annotations

from collections.abc import Iterable

from serving import propensity as propensity_mod
from serving.catalog_snapshot import CatalogSnapshot
from serving.context_trending import ContextQuery
from serving.online_features import UserFeatures
from serving.ranking_types import (
    CATALOG_EMPTY,
    EXPLORATION_REASON,
    HOLDOUT,
    HOLDOUT_REASON,
    HYBRID,
    HYBRID_V1,
    LEARNED,
    NO_INTERESTS,
    OPTED_OUT,
    POPULAR_IN_CATEGORY,
    SOURCE_EXPLORATION,
    SOURCE_INTEREST,
    SOURCE_TRENDING,
    STORE_UNAVAILABLE,
    STRATEGY,
    UNKNOWN_USER,
    RankedItem,
    Ranking,
    RankingParams,
    RankRequest,
)
from serving.strategies import STRATEGIES, RankingStrategy, strategy_for

__all__ = [
    "CATALOG_EMPTY",
    "EXPLORATION_REASON",
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
    "STRATEGIES",
    "STRATEGY",
    "UNKNOWN_USER",
    "RankRequest",
    "RankedItem",
    "Ranking",
    "RankingParams",
    "RankingStrategy",
    "rank",
    "strategy_for",
]

_DEFAULT_PARAMS = RankingParams()


def rank(
    user: UserFeatures | None,
    catalog: CatalogSnapshot,
    k: int,
    now_ms: int,
    exclude: Iterable[str] = (),
    params: RankingParams = _DEFAULT_PARAMS,
    *,
    fallback_reason: str = "",
    seed: int = 0,
    propensity: propensity_mod.PropensityModel | None = None,
    context: ContextQuery | None = None,
) -> Ranking:
    """Top ``k`` catalog items for ``user`` (None = unknown: trending fallback), ranked
    by the strategy ``params.strategy`` names.

    ``fallback_reason`` forces the non-personalized list with that reason (used when
    the online store is down and the user's features are unknowable). ``seed`` makes
    a hybrid strategy's exploration picks reproducible per request.
    """
    request = RankRequest(
        user=user,
        catalog=catalog,
        k=k,
        now_ms=now_ms,
        exclude=tuple(exclude),
        params=params,
        fallback_reason=fallback_reason,
        seed=seed,
        propensity=propensity,
        context=context,
    )
    return strategy_for(params.strategy).rank(request)
