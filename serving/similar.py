"""Similar items (pure): co-visitation, content and CF neighbours of one item, blended.

For an anchor item every other catalogued item gets three scores, each over its best
(0..1):

==============  ===============================================  =======================
source          score                                            reason
==============  ===============================================  =======================
covisitation    the pair's co-visitation weight (both            often viewed together
                directions, as the job stores them)
content         weighted Jaccard of category path, brand, tags   same brand / similar
                (``serving/item_content.py``)
cf              cosine of the items' CF factors, above 0         similar
==============  ===============================================  =======================

blended as ``sum of weight[s] * score[s]`` (``catalog.similar_*_weight``), plus a
tie-break of ``TIE_BREAK`` x the item's relative trending score, so equally similar items
come most popular first. With a request context (country, device) whose popularity the
job has seen enough of (``serving/context_trending.py``), ``catalog.similar_context_weight``
x the item's popularity there is added too: among items alike to the anchor, those
popular where the visitor is rise, and say so ("same brand, popular in DE"). Context
never makes an unrelated item similar. The item itself, unavailable items, the caller's
exclusions and (with a user) what the user bought never appear. Each item is explained
by the source contributing most to its score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from personalization.settings import Settings
from serving.catalog_snapshot import CatalogSnapshot
from serving.context_trending import ContextQuery, context_trending
from serving.item_content import ContentWeights, item_content
from serving.ranking_types import RankedItem

__all__ = [
    "SIMILAR_SOURCES",
    "SimilarParams",
    "UnknownItem",
    "similar_items",
]

COVISITATION = "covisitation"
CONTENT = "content"
CF = "cf"
SIMILAR_SOURCES = (COVISITATION, CONTENT, CF)
# Popularity only orders items the similarity scores cannot tell apart.
TIE_BREAK = 0.01


class UnknownItem(KeyError):
    """The anchor item is not in the catalog (the servicer answers NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class SimilarParams:
    covisitation_weight: float = 1.0
    content_weight: float = 0.6
    cf_weight: float = 0.4
    # Popularity in the request's context, beside the similarity sources (0: ignored).
    context_weight: float = 0.2
    half_life_s: float = 6 * 3600.0
    content: ContentWeights = field(default_factory=ContentWeights)

    @classmethod
    def from_settings(cls, settings: Settings) -> SimilarParams:
        cfg = settings.catalog
        return cls(
            covisitation_weight=cfg.similar_covisitation_weight,
            content_weight=cfg.similar_content_weight,
            cf_weight=cfg.similar_cf_weight,
            context_weight=cfg.similar_context_weight,
            half_life_s=settings.features.trending_half_life_s,
            content=ContentWeights(cfg.category_weight, cfg.brand_weight, cfg.tag_weight),
        )


def _over_best(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    values = np.where(allowed, values, 0.0)
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def _covisitation(catalog: CatalogSnapshot, i: int) -> np.ndarray:
    raw = np.zeros(len(catalog), dtype=np.float64)
    entry = catalog.covisitation.get(i)
    if entry is not None:
        neighbours, weights = entry
        raw[neighbours] = weights
    return raw


def _cf(catalog: CatalogSnapshot, i: int) -> np.ndarray:
    n = len(catalog)
    if not catalog.has_factors or not catalog.factor_mask[i]:
        return np.zeros(n, dtype=np.float64)
    factors = catalog.item_factors
    norms = catalog.column("factor_norms", lambda c: np.linalg.norm(c.item_factors, axis=1))
    dots = (factors @ factors[i]).astype(np.float64)
    denom = norms * float(norms[i])
    cosine = np.divide(dots, denom, out=np.zeros(n, dtype=np.float64), where=denom > 0)
    return np.where(catalog.factor_mask, np.clip(cosine, 0.0, None), 0.0)


def similar_items(
    catalog: CatalogSnapshot,
    item_id: str,
    k: int,
    params: SimilarParams,
    *,
    exclude: Iterable[str] = (),
    context: ContextQuery | None = None,
) -> list[RankedItem]:
    """The ``k`` items most like ``item_id``, best first, each with its reason.

    Raises :class:`UnknownItem` when the catalog does not hold ``item_id``. ``exclude``
    takes the caller's exclusions and the user's purchases; ``context`` the request's
    country / device (None: global popularity only breaks ties).
    """
    i = catalog.index_of.get(item_id)
    if i is None:
        raise UnknownItem(item_id)
    n = len(catalog)
    if k <= 0 or n <= 1:
        return []
    allowed = np.ones(n, dtype=bool)
    allowed[i] = False
    allowed[catalog.unavailable_positions()] = False
    banned = [catalog.index_of[x] for x in exclude if x in catalog.index_of]
    if banned:
        allowed[banned] = False
    weights = {
        COVISITATION: params.covisitation_weight,
        CONTENT: params.content_weight,
        CF: params.cf_weight,
    }
    scores: dict[str, np.ndarray] = {}
    if weights[COVISITATION] > 0:
        scores[COVISITATION] = _over_best(_covisitation(catalog, i), allowed)
    if weights[CONTENT] > 0:
        index = item_content(catalog, params.content)
        scores[CONTENT] = _over_best(index.similarity([i]), allowed)
    if weights[CF] > 0:
        scores[CF] = _over_best(_cf(catalog, i), allowed)
    total = np.zeros(n, dtype=np.float64)
    for source, values in scores.items():
        total += weights[source] * values
    similar = total > 0  # an item no source relates to the anchor is not "similar"
    trending = catalog.trending_relative(params.half_life_s)
    top_trend = float(trending.max()) if trending.size else 0.0
    if top_trend > 0:
        total += TIE_BREAK * trending / top_trend
    local = context_trending(catalog, context, params.half_life_s)
    if local is not None and params.context_weight > 0:
        local_scores, local_reason = local
        total += params.context_weight * local_scores
    else:
        local_scores, local_reason = None, ""
    total = np.where(allowed & similar, total, -np.inf)
    candidates = int(np.isfinite(total).sum())
    take = min(k, candidates)
    if take <= 0:
        return []
    top = np.argpartition(-total, take - 1)[:take]
    order = sorted(top.tolist(), key=lambda j: (-total[j], catalog.item_ids[j]))
    content_index = item_content(catalog, params.content) if CONTENT in scores else None
    items = []
    for j in order:
        best = max(scores, key=lambda s: weights[s] * scores[s][j])
        if best == COVISITATION:
            reason = "often viewed together"
        elif best == CONTENT and content_index is not None and content_index.shares_brand(i, j):
            reason = "same brand"
        else:
            reason = "similar"
        if local_scores is not None and local_scores[j] > 0:
            reason = f"{reason}, {local_reason}"
        items.append(
            RankedItem(
                item_id=catalog.item_ids[j],
                score=float(total[j]),
                reason=reason,
                category=catalog.categories[catalog.category_codes[j]],
                source=best,
            )
        )
    return items
