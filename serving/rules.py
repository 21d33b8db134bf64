"""Business rules (pure) as stages of one pipeline over a request's scores.

A strategy scores the catalog, then :func:`run_rules` passes one :class:`Slate` (the
request's score array and the list being picked) through the strategy's stages in
order. Every stage implements :class:`RuleStage`:

=============  =======================================================================
stage          rule
=============  =======================================================================
exclusion      excluded, purchased and unavailable items (deleted, not available or
               out of stock in the catalog; with ``just_seen`` also the user's
               ``exclude_recent`` most recent) never appear: their score is ``-inf``
fatigue        items and categories shown in the impression window lose score
               (``serving/fatigue.py``); items shown ``max_item_impressions`` times
               are held back (``-inf``) by the frequency cap
diversity      picks the top k, at most ``ceil(k * share)`` per category when the list
               is personalized; soft: capped categories fill what nothing else can
exploration    the last ``floor(k * exploration_share)`` personalized slots go to
               seeded draws from the candidates ranked just below the top k
source_        the same slots, each given to a candidate source drawn at random
exploration    (seeded) from those with a candidate left: its best remaining item
cap_refill     the frequency cap is soft: held-back items fill a list nothing else
               could fill, with their score from before fatigue
=============  =======================================================================

Stages read the request and never change it (nor the catalog); they write only the
slate, whose ``score`` is the request's own array. :data:`RULE_STAGES` registers them by
name; ``tests/unit/test_serving_contracts.py`` runs one contract over every entry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from serving import fatigue as fatigue_mod
from serving.ranking_types import RankRequest
from serving.selection import ordered_candidates, select_capped

__all__ = [
    "RULE_STAGES",
    "CapRefillStage",
    "DiversityStage",
    "ExclusionStage",
    "ExplorationStage",
    "FatigueStage",
    "RuleStage",
    "Slate",
    "SourceExplorationStage",
    "run_rules",
]

_NO_ORDER = np.zeros(0, dtype=np.int64)


@dataclass(slots=True, eq=False)
class Slate:
    """The working state of one request's rule pipeline."""

    # float64 [n], owned by this request (stages write it): -inf = not eligible.
    score: np.ndarray
    personalized: bool
    # How deep the ranked order must go: the deepest any stage of the pipeline reads.
    pool: int = 0
    # Catalog positions the exclusion stage bans; a strategy that also masks its
    # candidate sources with them computes them first and hands them over.
    excluded: list[int] | None = None
    # Scores before fatigue (None: unchanged) and the positions the frequency cap held
    # back, for cap_refill.
    before_cap: np.ndarray | None = None
    held_back: list[int] = field(default_factory=list)
    order: np.ndarray = field(default_factory=lambda: _NO_ORDER)  # ranked, best first
    chosen: list[int] = field(default_factory=list)  # the picked positions, in list order
    explored: set[int] = field(default_factory=set)  # picked by exploration
    # Each candidate source's scores [n] (strategies that blend sources hand them over),
    # and which source source_exploration drew for each of its picks.
    sources: Mapping[str, np.ndarray] = field(default_factory=dict)
    explored_sources: dict[int, str] = field(default_factory=dict)


class RuleStage(Protocol):
    """The role of a business rule: one stage of the pipeline over a :class:`Slate`."""

    @property
    def name(self) -> str: ...

    def depth(self, request: RankRequest) -> int:
        """How many ranked candidates this stage reads (0: it reads no order)."""
        ...

    def apply(self, request: RankRequest, slate: Slate) -> None: ...


@dataclass(frozen=True, slots=True)
class ExclusionStage:
    """Excluded and purchased items (and with ``just_seen`` the recent ones) never appear."""

    just_seen: bool = False
    name: ClassVar[str] = "exclusion"

    def positions(self, request: RankRequest) -> list[int]:
        """Catalog positions of the banned items (ids not catalogued are ignored)."""
        banned = set(request.exclude)
        user = request.user
        if user is not None:
            banned.update(user.purchased_items)
            recent = request.params.exclude_recent
            if self.just_seen and recent > 0:
                banned.update(user.recent_items[:recent])
        catalog = request.catalog
        index_of = catalog.index_of
        positions = [index_of[i] for i in banned if i in index_of]
        # Unavailable items are banned for everyone, fallbacks included (cached per
        # snapshot, so the common case costs one empty array).
        unavailable = catalog.unavailable_positions()
        if unavailable.size:
            positions = sorted(set(positions).union(unavailable.tolist()))
        return positions

    def depth(self, request: RankRequest) -> int:
        return 0

    def apply(self, request: RankRequest, slate: Slate) -> None:
        if slate.excluded is None:
            slate.excluded = self.positions(request)
        if slate.excluded:
            slate.score[slate.excluded] = -np.inf


@dataclass(frozen=True, slots=True)
class FatigueStage:
    """What the user was shown costs score; the frequency cap holds items back."""

    name: ClassVar[str] = "fatigue"

    def depth(self, request: RankRequest) -> int:
        return 0

    def apply(self, request: RankRequest, slate: Slate) -> None:
        fatigue = fatigue_mod.fatigue_for(
            request.user, request.catalog, request.now_ms, request.params.fatigue
        )
        if fatigue.multiplier is None:
            return  # nothing shown: no array to multiply
        slate.before_cap = slate.score
        slate.score = fatigue_mod.apply(slate.score, fatigue)
        slate.held_back = fatigue.capped


@dataclass(frozen=True, slots=True)
class DiversityStage:
    """Picks the top k with a soft cap per category (personalized lists only).

    ``share`` of k per category; None takes ``params.category_cap_share``.
    """

    share: float | None = None
    name: ClassVar[str] = "diversity"

    def depth(self, request: RankRequest) -> int:
        # A pool a few times k is almost always enough to satisfy the cap; if not,
        # apply() ranks the whole catalog.
        k = request.k
        return max(4 * k, k + 32)

    def apply(self, request: RankRequest, slate: Slate) -> None:
        k = request.k
        if k <= 0:
            slate.chosen = []
            return
        share = request.params.category_cap_share if self.share is None else self.share
        cap = max(1, math.ceil(k * share)) if slate.personalized else k
        score, codes = slate.score, request.catalog.category_codes
        order = ordered_candidates(score, pool=max(slate.pool, self.depth(request)))
        chosen = select_capped(order, codes, k, cap)
        if len(chosen) < k and order.size < np.isfinite(score).sum():
            order = ordered_candidates(score, pool=score.shape[0])
            chosen = select_capped(order, codes, k, cap)
        slate.order, slate.chosen = order, chosen


@dataclass(frozen=True, slots=True)
class ExplorationStage:
    """The last ``floor(k * exploration_share)`` slots go to seeded draws from just below."""

    name: ClassVar[str] = "exploration"

    def depth(self, request: RankRequest) -> int:
        return request.k + self._pool(request)

    @staticmethod
    def _pool(request: RankRequest) -> int:
        return request.k * max(1, request.params.exploration_pool_factor)

    def apply(self, request: RankRequest, slate: Slate) -> None:
        if not slate.personalized:
            return
        slots = math.floor(request.k * request.params.exploration_share)
        if slots <= 0:
            return
        chosen = slate.chosen
        taken = set(chosen)
        below = slate.order[: len(chosen) + self._pool(request)].tolist()
        rest = [i for i in below if i not in taken]
        slots = min(slots, len(rest), len(chosen))
        if slots <= 0:
            return
        picks = random.Random(request.seed).sample(rest, slots)
        slate.chosen = chosen[: len(chosen) - slots] + picks
        slate.explored = set(picks)


@dataclass(frozen=True, slots=True)
class SourceExplorationStage:
    """Exploration over sources: the last ``floor(k * exploration_share)`` slots each go
    to a candidate source drawn at random (seeded) among those with an eligible item
    left, which places its best one.

    Drawing sources, not items below the top k, means every source's best candidates
    get shown, clicked or ignored, and logged: a learned blend only learns the weight of
    a source whose items it sees outcomes for, and would otherwise starve the ones it
    starts out weighing low.
    """

    name: ClassVar[str] = "source_exploration"

    def depth(self, request: RankRequest) -> int:
        return 0

    def apply(self, request: RankRequest, slate: Slate) -> None:
        if not slate.personalized or not slate.sources:
            return
        chosen = slate.chosen
        slots = min(math.floor(request.k * request.params.exploration_share), len(chosen))
        if slots <= 0:
            return
        kept = chosen[: len(chosen) - slots]
        eligible = np.isfinite(slate.score)
        eligible[kept] = False
        rng = random.Random(request.seed)
        names = sorted(slate.sources)
        picks: list[int] = []
        for slot in chosen[len(kept) :]:
            best = {}
            for name in names:
                scores = np.where(eligible, slate.sources[name], 0.0)
                top = int(scores.argmax())
                if scores[top] > 0:
                    best[name] = top
            if not best:
                # No source has an eligible candidate: the slot keeps its own pick, or
                # the best item left when an exploration pick took that one.
                if not eligible[slot]:
                    rest = np.where(eligible, slate.score, -np.inf)
                    slot = int(rest.argmax())
                    if not np.isfinite(rest[slot]):
                        continue
                picks.append(slot)
                eligible[slot] = False
                continue
            name = rng.choice(sorted(best))
            picks.append(best[name])
            eligible[best[name]] = False
            slate.explored_sources[best[name]] = name
        slate.chosen = kept + picks
        slate.explored = set(slate.explored_sources)


@dataclass(frozen=True, slots=True)
class CapRefillStage:
    """The frequency cap is soft: held-back items fill a list nothing else can fill."""

    name: ClassVar[str] = "cap_refill"

    def depth(self, request: RankRequest) -> int:
        return 0

    def apply(self, request: RankRequest, slate: Slate) -> None:
        if not slate.held_back:
            return
        before = slate.score if slate.before_cap is None else slate.before_cap
        filled = fatigue_mod.refill(slate.chosen, before, slate.held_back, request.k)
        extra = filled[len(slate.chosen) :]
        if extra:
            # They keep their score from before the cap (and fatigue).
            slate.score[extra] = before[extra]
        slate.chosen = filled


# Every stage class by name; each strategy's pipeline is built from instances of these.
RULE_STAGES: Mapping[str, type[RuleStage]] = {
    stage.name: stage
    for stage in (
        ExclusionStage,
        FatigueStage,
        DiversityStage,
        ExplorationStage,
        SourceExplorationStage,
        CapRefillStage,
    )
}


def run_rules(
    stages: Sequence[RuleStage],
    request: RankRequest,
    score: np.ndarray,
    *,
    personalized: bool,
    excluded: list[int] | None = None,
    sources: Mapping[str, np.ndarray] | None = None,
) -> Slate:
    """Pass ``score`` (the request's own array: it is written) through ``stages``."""
    pool = 0
    for stage in stages:
        pool = max(pool, stage.depth(request))
    slate = Slate(score, personalized, pool, excluded, sources=sources or {})
    for stage in stages:
        stage.apply(request, slate)
    return slate
