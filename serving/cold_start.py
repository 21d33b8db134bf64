"""New items (pure): a content-based cold-start score, and their slots in a list.

An item is *new* while it is sellable, was created within ``catalog.new_item_days``
and no event has mentioned it yet (``last_event_ms == 0``): nothing behavioural can
rank it, so its content does. Its cold-start score for a user (0..1) is the better of

- **interest**: the user's interest (over their strongest) in a level of the item's
  category path, the leaf counting fully and each broader level ``PARENT_DECAY`` less
  (categories compared case-insensitively);
- **recent items**: the content similarity (``serving/item_content.py``: category path,
  brand, tags) of the item to the user's recent items, the newer ones weighing more.

A personalized Recommend list gives its last ``catalog.new_item_slots`` places to the
best new items scoring at least ``catalog.new_item_min_score`` (fewer if fewer qualify),
each explained "new in <category>" with the category that matched (a new item the
strategy ranked by itself keeps its place, explained the same way). Excluded items and
unavailable ones never take a slot (the item has no events, so the user cannot have
bought it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from personalization.settings import Settings
from serving.catalog_snapshot import CatalogSnapshot
from serving.item_content import ContentWeights, item_content
from serving.online_features import UserFeatures
from serving.ranking_types import RankedItem

__all__ = [
    "NEW_ITEM_SOURCE",
    "PARENT_DECAY",
    "ColdStartParams",
    "merge_new_items",
    "new_item_positions",
    "new_items_for",
]

NEW_ITEM_SOURCE = "new_item"
# A match on a broader level of the category path counts this much less per level.
PARENT_DECAY = 0.7

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class ColdStartParams:
    new_item_ms: int = 14 * DAY_MS
    slots: int = 2
    min_score: float = 0.2
    recency_decay: float = 0.7
    anchor_items: int = 5
    weights: ContentWeights = field(default_factory=ContentWeights)

    @classmethod
    def from_settings(cls, settings: Settings) -> ColdStartParams:
        cfg = settings.catalog
        return cls(
            new_item_ms=int(cfg.new_item_days * DAY_MS),
            slots=cfg.new_item_slots,
            min_score=cfg.new_item_min_score,
            recency_decay=settings.ranking.recency_decay,
            anchor_items=settings.ranking.anchor_items,
            weights=content_weights(settings),
        )


def content_weights(settings: Settings) -> ContentWeights:
    cfg = settings.catalog
    return ContentWeights(cfg.category_weight, cfg.brand_weight, cfg.tag_weight)


def new_item_positions(catalog: CatalogSnapshot, now_ms: int, new_item_ms: int) -> np.ndarray:
    """Positions of the new items: sellable, created recently, no event yet."""
    n = len(catalog)
    if n == 0 or catalog.created_ms.shape[0] != n or not catalog.meta:
        return np.empty(0, dtype=np.int64)
    created = catalog.created_ms
    new = (created > 0) & (created >= now_ms - new_item_ms) & (catalog.last_event_ms == 0)
    return np.flatnonzero(new & catalog.available)


def _interest_match(path: Sequence[str], interest: dict[str, float]) -> tuple[float, str]:
    """The best (score, level) of a category path against normalised interests."""
    best, level = 0.0, ""
    for depth, name in enumerate(reversed(path)):
        score = interest.get(name.lower(), 0.0) * PARENT_DECAY**depth
        if score > best:
            best, level = score, name
    return best, level


def new_items_for(
    user: UserFeatures | None,
    catalog: CatalogSnapshot,
    now_ms: int,
    params: ColdStartParams,
    *,
    exclude: Iterable[str] = (),
) -> list[RankedItem]:
    """The new items this user's interests and recent items match, best first (at most
    ``params.slots``, each scoring at least ``params.min_score``)."""
    if user is None or params.slots <= 0:
        return []
    positions = new_item_positions(catalog, now_ms, params.new_item_ms)
    if not positions.size:
        return []
    banned = set(exclude)
    top = max((s for _, s in user.interests if s > 0), default=0.0)
    interest: dict[str, float] = {}
    if top > 0:
        for category, score in user.interests:
            key = category.lower()
            interest[key] = max(interest.get(key, 0.0), score / top)
    anchors = [
        catalog.index_of[i]
        for i in user.recent_items[: params.anchor_items]
        if i in catalog.index_of
    ]
    recent = np.zeros(positions.size, dtype=np.float64)
    if anchors:
        index = item_content(catalog, params.weights)
        for p, anchor in enumerate(anchors):
            sims = index.similarity([anchor])[positions] * params.recency_decay**p
            np.maximum(recent, sims, out=recent)
    picks: list[RankedItem] = []
    for k, i in enumerate(positions.tolist()):
        item_id = catalog.item_ids[i]
        if item_id in banned:
            continue
        meta = catalog.meta.get(item_id)
        category = catalog.categories[catalog.category_codes[i]]
        path = meta.category_path if meta is not None and meta.category_path else (category,)
        by_interest, level = _interest_match(path, interest)
        score = max(by_interest, float(recent[k]))
        if score < params.min_score:
            continue
        shown = level if by_interest >= recent[k] and level else (path[-1] if path else "")
        picks.append(
            RankedItem(
                item_id=item_id,
                score=score,
                reason=f"new in {shown}" if shown else "new",
                category=category,
                source=NEW_ITEM_SOURCE,
            )
        )
    picks.sort(key=lambda r: (-r.score, r.item_id))
    return picks[: params.slots]


def merge_new_items(
    items: Sequence[RankedItem],
    logged: Sequence[dict[str, float]],
    new: Sequence[RankedItem],
    k: int,
) -> tuple[list[RankedItem], tuple[dict[str, float], ...]]:
    """The list with the new items in its last places (at most ``k`` in all), and the
    logged ranking features kept parallel to it (a new item was ranked by no feature).

    A new item the strategy picked by itself keeps its place and score and is explained
    as new: that it is new is the news."""
    news = {item.item_id: item for item in new}
    items = [
        dataclasses.replace(item, reason=news[item.item_id].reason, source=NEW_ITEM_SOURCE)
        if item.item_id in news
        else item
        for item in items
    ]
    listed = {item.item_id for item in items}
    fresh = [item for item in new if item.item_id not in listed][:k]
    if not fresh:
        return items, tuple(logged)
    keep = max(0, min(len(items), k - len(fresh)))
    merged = [*items[:keep], *fresh]
    features = (*logged[:keep], *({} for _ in fresh)) if logged else ()
    return merged, tuple(features)
