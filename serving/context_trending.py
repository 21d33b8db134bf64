"""Trending per request context (pure: numpy over the catalog snapshot, no I/O).

The job keeps each item's popularity per context value (``context_keys`` /
``context_scores`` of ``item_stats``: "c=DE", "d=mobile", "c=DE&d=mobile"). The catalog
snapshot holds them as an index, context key -> {item position: score}, maintained here
(:func:`build_index`, :func:`update_index`) when the background refresh builds a
snapshot, so a request only reads it.

:func:`context_trending` answers a request's context with the trending list of the most
specific context that has enough data (``features.context.min_items`` items whose
decayed popularity sums to ``min_weight``): country and device together, then the
country, then the device; None when none has, so the caller keeps global trending.
Computed once per snapshot and context key (the snapshot is immutable; refreshes build
a new one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from personalization.context_keys import context_keys, describe
from personalization.settings import ContextSettings

if TYPE_CHECKING:
    from serving.catalog_snapshot import CatalogSnapshot

__all__ = [
    "ContextIndex",
    "ContextQuery",
    "ItemContexts",
    "build_index",
    "context_trending",
    "update_index",
]

# An item's (context key, score as of its trending_ref_ms) pairs, strongest first.
ItemContexts = tuple[tuple[str, float], ...]
# Context key -> {catalog position: score}.
ContextIndex = Mapping[str, Mapping[int, float]]


@dataclass(frozen=True, slots=True)
class ContextQuery:
    """A request's context and how much data a context needs to be trusted."""

    country: str = ""
    device: str = ""
    min_items: int = 3
    min_weight: float = 5.0

    @classmethod
    def of(cls, country: str, device: str, cfg: ContextSettings) -> ContextQuery | None:
        if not (country.strip() or device.strip()):
            return None
        return cls(country, device, cfg.min_items, cfg.min_weight)


def item_contexts(keys: object, scores: object) -> ItemContexts:
    """The pairs of one ``item_stats`` row (lists as Feast decodes them; else none)."""
    if not isinstance(keys, list) or not isinstance(scores, list):
        return ()
    return tuple(
        (str(k), float(s))
        for k, s in zip(keys, scores, strict=False)
        if isinstance(s, int | float) and s > 0
    )


def build_index(contexts: Iterable[ItemContexts]) -> dict[str, dict[int, float]]:
    """The index of a whole snapshot, ``contexts`` in position order."""
    index: dict[str, dict[int, float]] = {}
    for position, pairs in enumerate(contexts):
        for key, score in pairs:
            index.setdefault(key, {})[position] = score
    return index


def update_index(
    index: ContextIndex, changes: Iterable[tuple[int, ItemContexts, ItemContexts]]
) -> dict[str, dict[int, float]]:
    """A copy of ``index`` with items' contexts replaced: ``(position, before, after)``.
    Copy on write: only the per-key maps an item left or joined are copied."""
    out: dict[str, dict[int, float]] = dict(index)  # type: ignore[arg-type]
    copied: set[str] = set()

    def writable(key: str) -> dict[int, float]:
        if key not in copied:
            out[key] = dict(out.get(key, {}))
            copied.add(key)
        return out[key]

    for position, before, after in changes:
        if before == after:
            continue
        for key, _ in before:
            writable(key).pop(position, None)
        for key, score in after:
            writable(key)[position] = score
    return {key: entries for key, entries in out.items() if entries}


@dataclass(frozen=True, slots=True)
class _Column:
    scores: np.ndarray | None  # float64 [n] in 0..1, None when the context is too thin
    items: int
    weight: float


def _column(
    snapshot: CatalogSnapshot, key: str, half_life_s: float, query: ContextQuery
) -> _Column:
    from serving.catalog_snapshot import decay_factors  # the snapshot module imports us

    entries = snapshot.context_index.get(key)
    n = len(snapshot)
    if not entries or n == 0:
        return _Column(None, 0, 0.0)
    positions = np.fromiter(entries.keys(), dtype=np.int64, count=len(entries))
    raw = np.fromiter(entries.values(), dtype=np.float64, count=len(entries))
    # The common reference trending_relative uses: scores on one scale with global.
    ref = int(snapshot.trending_ref_ms.max())
    decayed = raw * decay_factors(snapshot.trending_ref_ms[positions], ref, half_life_s)
    weight = float(decayed.sum())
    if len(entries) < query.min_items or weight < query.min_weight or weight <= 0:
        return _Column(None, len(entries), weight)
    dense = np.zeros(n, dtype=np.float64)
    dense[positions] = decayed / float(decayed.max())
    return _Column(dense, len(entries), weight)


def context_trending(
    snapshot: CatalogSnapshot, query: ContextQuery | None, half_life_s: float
) -> tuple[np.ndarray, str] | None:
    """(scores 0..1 over the catalog, the reason) of the most specific context of
    ``query`` with enough data, or None (no context, or too little data anywhere)."""
    if query is None:
        return None
    for key in context_keys(query.country, query.device):
        name = f"context_trending:{key}:{half_life_s}:{query.min_items}:{query.min_weight}"
        column = snapshot.derived(
            name, partial(_column, key=key, half_life_s=half_life_s, query=query)
        )
        assert isinstance(column, _Column)
        if column.scores is not None:
            return column.scores, describe(key)
    return None
