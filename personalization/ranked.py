"""Weights ranked strongest first, ties by name: the order features and models export.

The job ranks on its hot path (an item's co-visitation neighbours on every render, a
user's interests on every row), so the order comes from sorts that compare in C instead of a
Python key function per entry: by weight alone when no two weights are equal (the usual
case: a set of the weights tells), else by name, then stably by weight, descending; the
same order as ``sorted(key=lambda kv: (-kv[1], kv[0]))``. 100 entries, top 50: 32 µs
when it always sorted twice, now 20 µs without ties and 30 µs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter

__all__ = ["by_weight"]

_WEIGHT = itemgetter(1)


def by_weight(weights: Mapping[str, float], n: int | None = None) -> list[tuple[str, float]]:
    """``(name, weight)`` pairs, strongest first, ties by name; the first ``n`` if given."""
    if len(set(weights.values())) == len(weights):
        # No two weights equal (the usual case for decayed sums): one sort decides.
        ranked = sorted(weights.items(), key=_WEIGHT, reverse=True)
    else:
        # Names first (strings compare faster alone than inside tuples), then stably by
        # weight: equal weights keep the names' order.
        names = sorted(weights)
        pairs = zip(names, map(weights.__getitem__, names), strict=True)
        ranked = sorted(pairs, key=_WEIGHT, reverse=True)
    return ranked[:n] if n is not None else ranked
