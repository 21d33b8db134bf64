"""An item's popularity per context value (country, device, both), beside its global
trending score (pure; the item step keeps it in ``ItemState.contexts``).

The same event weights as trending (``items.POPULARITY_WEIGHTS``), decayed with the same
half-life and the same reference time (``ItemState.trending_ref_ms``), so a context's
score and the global one are on one scale. Bounded: an item keeps its ``max_per_item``
strongest contexts; a weaker one is dropped, as the weakest interest of a user is. Serving
gathers the items' scores per context into that context's trending list
(``serving/context_trending.py``).
"""

from __future__ import annotations

from typing import Any

from personalization.context_keys import context_keys
from personalization.decimals import rounded_all
from personalization.events import Event
from personalization.ranked import by_weight

__all__ = ["add", "decay", "row_fields"]


def add(contexts: dict[str, float], event: Event, weight: float, max_per_item: int) -> None:
    """Add ``weight`` (already decayed to the reference time) to each of the event's
    context keys, then drop the weakest beyond ``max_per_item``."""
    if max_per_item <= 0:
        return
    for key in context_keys(event.country, event.device):
        contexts[key] = contexts.get(key, 0.0) + weight
    while len(contexts) > max_per_item:
        weakest = min(contexts, key=lambda k: (contexts[k], k))
        del contexts[weakest]


def decay(contexts: dict[str, float], factor: float) -> None:
    """Bring every score to a later reference time (the caller's trending decay)."""
    for key in contexts:
        contexts[key] *= factor


def row_fields(contexts: dict[str, float]) -> dict[str, Any]:
    """``context_keys`` / ``context_scores`` of the ``item_stats`` row, strongest first."""
    ranked = by_weight(contexts)
    return {
        "context_keys": [key for key, _ in ranked],
        "context_scores": rounded_all(score for _, score in ranked),
    }
