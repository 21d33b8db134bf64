"""Per-item state (pure): popularity over windows and a decayed trending score.

Keyed by item id in the job. The row it renders is the ``item_stats`` feature view;
serving keeps the catalog of these rows in process and ranks trending items by
``trending_score`` (a time-decayed, event-weighted count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flink_jobs import context_popularity, windows
from flink_jobs.covisitation import CoVisitConfig, Neighbors
from personalization.compact_pickle import compact_pickle
from personalization.decay import decay_factor, decayed
from personalization.decimals import rounded, rounded_all
from personalization.events import (
    ADD_TO_CART,
    CLICK,
    FAVORITE,
    PRODUCT_VIEW,
    PURCHASE,
    RATING,
    Event,
)
from personalization.feature_updates import next_version_us

# A rating says the user watched / bought the item: it counts like a view (MovieLens
# replays are ratings only, and would otherwise have no popularity at all).
POPULARITY_WEIGHTS = {
    PRODUCT_VIEW: 1.0,
    CLICK: 1.0,
    RATING: 1.0,
    FAVORITE: 2.0,
    ADD_TO_CART: 3.0,
    PURCHASE: 5.0,
}
ITEM_COUNTED = {PRODUCT_VIEW: "views", ADD_TO_CART: "carts", PURCHASE: "purchases"}
ITEM_WINDOWS = windows.window_specs(("1h", "24h"))


@compact_pickle
@dataclass(slots=True)
class ItemState:
    item_id: str
    category: str = ""
    price: float = 0.0
    last_event_ms: int = 0
    trending: float = 0.0  # as of ``trending_ref_ms``
    trending_ref_ms: int = 0
    # counted kind -> window name -> buckets
    window_buckets: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    version_us: int = 0
    # The item's CF factors (float32 bytes; empty until learnt): the item half of the
    # partitioned online MF (flink_jobs/learning.py).
    cf_factors: bytes = b""
    # Popularity per context value (flink_jobs/context_popularity.py), as of
    # ``trending_ref_ms``. Appended last: older states load with it empty.
    contexts: dict[str, float] = field(default_factory=dict)
    # Who has the item in a cart, for the price_drop rules (flink_jobs/price_drop.py):
    # user -> [added ms, price then, {rule: last fired ms}]. Appended last, as above.
    carts: dict[str, list[Any]] = field(default_factory=dict)


def apply_item_event(
    state: ItemState, event: Event, half_life_s: float, max_contexts: int = 0
) -> bool:
    """Fold an event about this item; False when it says nothing about popularity.
    ``max_contexts``: context values kept per item (0: no popularity per context)."""
    weight = POPULARITY_WEIGHTS.get(event.event_type)
    if event.category:
        state.category = event.category
    if event.price:
        state.price = event.price
    if weight is None:
        changed = bool(event.category or event.price)
        if changed:
            state.version_us = next_version_us(event.event_time_ms, state.version_us)
        return changed
    t = event.event_time_ms
    if t > state.trending_ref_ms:
        factor = decay_factor(t - state.trending_ref_ms, half_life_s)
        state.trending *= factor
        if state.contexts:
            context_popularity.decay(state.contexts, factor)
        state.trending_ref_ms = t
    else:
        weight *= decay_factor(state.trending_ref_ms - t, half_life_s)
    state.trending += weight
    context_popularity.add(state.contexts, event, weight, max_contexts)
    reference = max(state.last_event_ms, t)
    kind = ITEM_COUNTED.get(event.event_type)
    if kind:
        per_kind = state.window_buckets.setdefault(kind, {})
        for spec in ITEM_WINDOWS:
            windows.add(per_kind.setdefault(spec.name, {}), spec, t, reference)
    state.last_event_ms = reference
    state.version_us = next_version_us(reference, state.version_us)
    return True


def item_feature_row(
    state: ItemState, neighbors: Neighbors | None = None, covisit: CoVisitConfig | None = None
) -> dict[str, Any]:
    """The ``item_stats`` feature view row (names match feature_repo/features.py).

    ``neighbors`` (co-visitation) is kept in state of its own: edges update it often,
    and pickling it alone is much cheaper than the whole item state.
    """
    cfg = covisit or CoVisitConfig()
    top = (neighbors or Neighbors()).top(cfg.neighbors, state.last_event_ms, cfg.half_life_s)
    row: dict[str, Any] = {
        # Decayed to the item's last event, not divided by the strongest: serving adds
        # each pair from the other item's side too (a pair is stored at the later item
        # only), and sums across rows need weights on one scale. Ranking normalises
        # per anchor, so no re-decay to "now" is needed.
        "covisit_items": [item for item, _ in top],
        "covisit_scores": rounded_all(w for _, w in top),
        "category": state.category,
        "price": state.price,
        "trending_score": rounded(state.trending),
        "trending_ref_ms": state.trending_ref_ms,
        "last_event_ms": state.last_event_ms,
        **context_popularity.row_fields(state.contexts),
    }
    for kind in ITEM_COUNTED.values():
        per_kind = state.window_buckets.get(kind, {})
        for spec in ITEM_WINDOWS:
            row[f"{kind}_{spec.name}"] = windows.total(
                per_kind.get(spec.name, {}), spec, state.last_event_ms
            )
    return row


def decayed_trending(score: float, ref_ms: int, now_ms: int, half_life_s: float) -> float:
    """A stored trending score brought forward to ``now_ms`` (serving uses this)."""
    if now_ms <= ref_ms:
        return score
    return decayed(score, ref_ms, now_ms, half_life_s)
