"""Frequency capping and fatigue (pure): what the user was already shown costs score.

The job counts impressions per user (``flink_jobs/impressions.py``); the row gives, per
item and per category, the times shown within ``features.impression_window_s`` and the
last time. Counts whose last impression is older than the window (the row was written
before they expired) are ignored.

- **Frequency cap**: an item shown ``max_item_impressions`` times is held back: it is
  only used to fill a list that cannot be filled otherwise (``capped``).
- **Fatigue**: every other shown item's score is multiplied by ``item_fatigue ** n``
  (n = times shown), and every item of a category shown more than
  ``category_fatigue_free`` times by ``category_fatigue ** (times - free)``, so lists
  rotate instead of repeating what the user keeps ignoring. Interacting with an item
  does not reset its count: a clicked item moves to "recent" and the just-seen rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.catalog_snapshot import CatalogSnapshot
from serving.online_features import UserFeatures


@dataclass(frozen=True, slots=True)
class FatigueRules:
    window_ms: int = 24 * 3600 * 1000
    max_item_impressions: int = 3  # 0 = no cap
    item_fatigue: float = 0.8
    category_fatigue: float = 0.95
    category_fatigue_free: int = 10


@dataclass(frozen=True, slots=True)
class Fatigue:
    """Per-item score multipliers (None = all 1) and positions held back by the cap."""

    multiplier: np.ndarray | None
    capped: list[int]


NO_FATIGUE = Fatigue(None, [])


def fatigue_for(
    user: UserFeatures | None, catalog: CatalogSnapshot, now_ms: int, rules: FatigueRules
) -> Fatigue:
    if user is None or not (user.item_impressions or user.category_impressions):
        return NO_FATIGUE
    horizon = now_ms - rules.window_ms
    multiplier = np.ones(len(catalog), dtype=np.float64)
    capped: list[int] = []
    index_of = catalog.index_of
    for item, (shown, last_ms) in user.item_impressions.items():
        i = index_of.get(item)
        if i is None or last_ms < horizon:
            continue
        if rules.max_item_impressions and shown >= rules.max_item_impressions:
            capped.append(i)
        else:
            multiplier[i] *= rules.item_fatigue**shown
    starts = catalog.category_starts
    for category, (shown, last_ms) in user.category_impressions.items():
        code = catalog.code_of.get(category)
        excess = shown - rules.category_fatigue_free
        if code is None or last_ms < horizon or excess <= 0:
            continue
        multiplier[starts[code] : starts[code + 1]] *= rules.category_fatigue**excess
    return Fatigue(multiplier, sorted(capped))


def apply(score: np.ndarray, fatigue: Fatigue) -> np.ndarray:
    """Scores with fatigue applied and capped items removed (``-inf``); a new array."""
    if fatigue.multiplier is None:
        return score
    out = score * fatigue.multiplier
    if fatigue.capped:
        out[fatigue.capped] = -np.inf
    return out


def refill(chosen: list[int], score_before_cap: np.ndarray, capped: list[int], k: int) -> list[int]:
    """Fill a list shorter than ``k`` with capped items, best first (the cap is soft)."""
    if len(chosen) >= k or not capped:
        return chosen
    taken = set(chosen)
    extra = [i for i in capped if i not in taken and np.isfinite(score_before_cap[i])]
    extra.sort(key=lambda i: (-float(score_before_cap[i]), i))
    return chosen + extra[: k - len(chosen)]
