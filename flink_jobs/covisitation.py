"""Co-visitation (pure): items a user interacts with close together are related.

For each new interaction with item ``j``, every item ``i`` among the user's last
``history`` items (newer ones count more) gains weight on the edges ``i → j`` and
``j → i``. Edge weights decay with a half-life in event time, and each item keeps at
most ``capacity`` neighbours (pruned to its ``neighbors`` strongest when full), so the
state fits in per-item keyed state.

Two pieces of state, both small and picklable:

- per user (user-keyed): :class:`History`, the last ``history`` items with their times;
- per item (item-keyed): :class:`Neighbors`, its capped, decayed neighbour weights.

In a job: the user operator calls :func:`edges_for` then :func:`push_history` and emits
the edges keyed by their source item; the item operator folds them with
:func:`add_edge`. :class:`CoVisitation` does both in process (tests, offline replay) and
plays the learner role (``flink_jobs/learner.py``): it predicts an item for a user from
the neighbour lists of the user's recent items, as serving's co-visitation source does.

Decay without touching every entry: a weight added at time ``t`` is stored as
``w * 2**((t - origin) / half_life)``; scaling all entries alike keeps their order, and
:meth:`Neighbors.weights_at` divides back. The origin moves forward (rescaling the few
entries) before the stored numbers could overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from personalization.compact_pickle import compact_pickle
from personalization.decay import decay_factor
from personalization.ranked import by_weight
from personalization.settings import LearningSettings

__all__ = [
    "CoVisitConfig",
    "CoVisitation",
    "History",
    "Neighbors",
    "add_edge",
    "edges_for",
    "push_history",
]

# 2**40 ≈ 1e12: far from float overflow, and precision relative to the largest entry
# is what ranking needs anyway.
_MAX_EXPONENT = 40.0


@dataclass(frozen=True, slots=True)
class CoVisitConfig:
    # How many of the user's previous items each new interaction links to.
    history: int = 5
    # Neighbours kept per item once pruned (exported / served).
    neighbors: int = 50
    # State may grow to this many before pruning back to ``neighbors`` (0 = 2x).
    capacity: int = 0
    half_life_s: float = 30 * 24 * 3600.0
    # Pairs further apart than this in event time are not linked (0 = no limit).
    max_gap_s: float = 0.0
    # The k-th previous item (0 = newest) links with weight position_decay**k.
    position_decay: float = 0.7
    # Multiply an edge by the interaction's weight (rating, purchase 5, ...)?
    use_weight: bool = False

    @classmethod
    def from_settings(cls, cfg: LearningSettings) -> CoVisitConfig:
        return cls(
            history=cfg.covisit_history,
            neighbors=cfg.covisit_neighbors,
            half_life_s=cfg.covisit_half_life_s,
            max_gap_s=cfg.covisit_max_gap_s,
            position_decay=cfg.covisit_position_decay,
        )

    @property
    def max_entries(self) -> int:
        return self.capacity or 2 * self.neighbors


@compact_pickle
@dataclass(slots=True)
class History:
    """A user's last items, newest first: ``(item_id, event_time_ms)``."""

    items: list[tuple[str, int]] = field(default_factory=list)


@compact_pickle
@dataclass(slots=True)
class Neighbors:
    """One item's decayed neighbour weights (see the module docstring for the scaling)."""

    scaled: dict[str, float] = field(default_factory=dict)
    origin_ms: int = 0

    def weights_at(self, now_ms: int, half_life_s: float) -> dict[str, float]:
        factor = decay_factor(now_ms - self.origin_ms, half_life_s)
        return {item: w * factor for item, w in self.scaled.items()}

    def weight_of(self, item: str, now_ms: int, half_life_s: float) -> float:
        """The weight of one neighbour, decayed to ``now_ms`` (0 when it is not one)."""
        scaled = self.scaled.get(item)
        return scaled * decay_factor(now_ms - self.origin_ms, half_life_s) if scaled else 0.0

    def top(self, n: int, now_ms: int, half_life_s: float) -> list[tuple[str, float]]:
        """The ``n`` strongest neighbours with weights decayed to ``now_ms``."""
        factor = decay_factor(now_ms - self.origin_ms, half_life_s)
        return [(item, w * factor) for item, w in by_weight(self.scaled, n)]


def edges_for(
    history: History, item: str, t_ms: int, weight: float, cfg: CoVisitConfig
) -> list[tuple[str, str, float, int]]:
    """Edges ``(source, target, weight, t_ms)`` that an interaction with ``item`` adds."""
    out: list[tuple[str, str, float, int]] = []
    base = weight if cfg.use_weight else 1.0
    position = 0
    for previous, t_prev in history.items:
        if previous == item:
            continue
        if cfg.max_gap_s and abs(t_ms - t_prev) > cfg.max_gap_s * 1000:
            break  # newest first: everything further back is older still
        w = base * cfg.position_decay**position
        out.append((previous, item, w, t_ms))
        out.append((item, previous, w, t_ms))
        position += 1
    return out


def links_for(
    history: History, item: str, t_ms: int, weight: float, cfg: CoVisitConfig
) -> tuple[tuple[str, float, int], ...]:
    """``(previous item, weight, t_ms)`` links of an interaction with ``item``: the pairs
    it forms with the user's history, stored once, at ``item``."""
    return tuple(
        (target, w, t)
        for source, target, w, t in edges_for(history, item, t_ms, weight, cfg)
        if source == item
    )


def push_history(history: History, item: str, t_ms: int, cfg: CoVisitConfig) -> None:
    items = [(i, t) for i, t in history.items if i != item]
    items.insert(0, (item, t_ms))
    history.items = items[: cfg.history]


def add_edge(state: Neighbors, target: str, weight: float, t_ms: int, cfg: CoVisitConfig) -> None:
    """Fold one edge into an item's neighbours (late edges count with their decay)."""
    if not state.scaled:
        state.origin_ms = t_ms
    exponent = (t_ms - state.origin_ms) / (cfg.half_life_s * 1000.0)
    if exponent > _MAX_EXPONENT:  # move the origin to t: rescale the stored entries
        factor = math.pow(2.0, -exponent)
        state.scaled = {k: v * factor for k, v in state.scaled.items() if v * factor > 1e-12}
        state.origin_ms, exponent = t_ms, 0.0
    state.scaled[target] = state.scaled.get(target, 0.0) + weight * math.pow(2.0, exponent)
    if len(state.scaled) > cfg.max_entries:
        state.scaled = dict(by_weight(state.scaled, cfg.neighbors))


@dataclass(slots=True)
class CoVisitation:
    """Histories and neighbour lists in process.

    Examples
    --------
    >>> cv = CoVisitation(CoVisitConfig(history=2))
    >>> for user, item, t in [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "y", 4)]:
    ...     cv.learn_one(user, item, 1.0, t)
    >>> [item for item, _ in cv.neighbors("x", 5)]
    ['y']
    """

    cfg: CoVisitConfig = field(default_factory=CoVisitConfig)
    histories: dict[str, History] = field(default_factory=dict)
    items: dict[str, Neighbors] = field(default_factory=dict)
    now_ms: int = 0

    @classmethod
    def from_settings(cls, cfg: LearningSettings) -> CoVisitation:
        return cls(CoVisitConfig.from_settings(cfg))

    def learn_one(
        self,
        user: str,
        item: str,
        weight: float = 1.0,
        t: int = 0,
        x: Mapping[str, float] | None = None,
    ) -> None:
        """Link ``item`` with the user's recent items at event time ``t`` (``x`` unused)."""
        history = self.histories.setdefault(user, History())
        for source, target, w, t_ms in edges_for(history, item, t, weight, self.cfg):
            add_edge(self.items.setdefault(source, Neighbors()), target, w, t_ms, self.cfg)
        push_history(history, item, t, self.cfg)
        self.now_ms = max(self.now_ms, t)

    def predict_one(self, user: str, item: str, x: Mapping[str, float] | None = None) -> float:
        """How strongly ``item`` neighbours the user's recent items (0.0 if not at all)."""
        return self._scores(user).get(item, 0.0)

    def rank(
        self,
        user: str,
        items: Sequence[str],
        x: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[str]:
        """``items`` by :meth:`predict_one`, best first; ties keep their given order."""
        scores = self._scores(user)
        return sorted(items, key=lambda item: -scores.get(item, 0.0))

    def _scores(self, user: str) -> dict[str, float]:
        # Serving's co-visitation score (serving/candidates.py): each recent item's
        # exported list relative to its strongest entry, the k-th newest weighing
        # position_decay**k. Entries of one list share their decay, so the ratio needs
        # no "now" and a prediction does not change with the clock alone.
        scores: dict[str, float] = {}
        for position, anchor in enumerate(self.recent(user)):
            state = self.items.get(anchor)
            if state is None or not state.scaled:
                continue
            top = by_weight(state.scaled)
            best = top[0][1]
            if best <= 0:
                continue
            recency = self.cfg.position_decay**position
            for neighbour, w in top[: self.cfg.neighbors]:
                scores[neighbour] = scores.get(neighbour, 0.0) + recency * w / best
        return scores

    def recent(self, user: str) -> list[str]:
        history = self.histories.get(user)
        return [item for item, _ in history.items] if history else []

    def neighbors(
        self, item: str, n: int = 50, now_ms: int | None = None
    ) -> list[tuple[str, float]]:
        state = self.items.get(item)
        if state is None:
            return []
        at = self.now_ms if now_ms is None else now_ms
        return state.top(min(n, self.cfg.neighbors), at, self.cfg.half_life_s)

    def export_item(self, item: str, now_ms: int | None = None) -> tuple[list[str], list[float]]:
        """``(neighbour ids, weights)`` strongest first, as feature arrays."""
        top = self.neighbors(item, self.cfg.neighbors, now_ms)
        return [i for i, _ in top], [w for _, w in top]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)
