"""The learned blend's head trained test-then-train on a replay (offline evaluation).

Serving's ``learned_v1`` strategy ranks by a linear head over the candidate sources'
scores (``serving/strategies.py``); in production that head is the click-propensity
model the job learns from exposures -> clicks (``flink_jobs/propensity.py``). A replay
has no clicks on our lists, so it trains the *same* learner (``propensity.Trainer``,
River's logistic regression) on what the stream says was chosen next, pairwise (the
feature difference of the chosen item and each negative, RankNet's loss):

- the positive: the item the user interacted with, with the features it had in the
  ranking made before the event was learnt (``Ranking.features``: the columns serving's
  code computed, never recomputed here);
- the negative, by WARP (the default, ``blend_warp_tries`` > 0): items drawn at random
  until one the learner's current weights rank above the chosen item or within
  ``blend_warp_margin`` of it, the pair weighted by L(rank), the harmonic number of the
  rank the number of draws estimates (:func:`warp_negative`). Events the head already
  gets right by the margin teach nothing; without the margin the updates (violators
  only) shrank the weights to noise. With ``blend_warp_tries`` 0: ``random_negatives``
  items drawn at random, unweighted.
- hard negatives stay off by default (``blend_shown_negatives``,
  ``blend_source_negatives``): the items the ranking showed and the sources' best
  candidates taught the head that a source's top candidates are bad (the chosen item
  is mostly outside them) and it ranked at half of hybrid_v1 (HitRate@10 0.050 vs
  0.118, first 6,000 MovieLens 100K events); so did top-weighted pairs against the
  head's own top (LambdaRank@10). A pointwise logistic loss against the head's own
  top k chased its tail too (ROC AUC 0.50).

The learner starts from the strategy's prior weights (``blend_warm_start``), so its
first versions rank like that blend. A gate chooses between the two whole blends by
their online hit rate (``blend_gate_window``): at each refresh the learnt weights become
the head only if their prequential HitRate@k over the window (each event scored before
it is learnt) is at least the prior's; else the strategy ranks with its prior.

The head the ranking uses is refreshed every ``refresh_every`` tested events through
``Trainer.cut_version`` -> ``PropensityModel.from_version``, the path a published version
takes to serving; until the first refresh the strategy ranks with its prior weights.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from flink_jobs import propensity
from personalization.settings import LearningSettings
from serving import candidates as cand
from serving.propensity import FeatureColumns, PropensityModel
from serving.ranking import Ranking

__all__ = ["BlendLearner", "examples_for", "in_top", "warp_negative"]


def examples_for(
    columns: FeatureColumns,
    target: int,
    shown: Collection[int],
    excluded: Collection[int],
    per_source: int,
    pool: int,
    random_negatives: int,
    rng: random.Random,
) -> list[tuple[dict[str, float], bool]]:
    """(features, chosen) rows for one tested event: the target as the positive; as
    negatives the ``shown`` items, ``per_source`` items drawn from each source's ``pool``
    best candidates and ``random_negatives`` drawn from the whole catalog (none
    excluded, none the target, each once)."""
    n = len(next(iter(columns.items.values())))
    negatives: dict[int, None] = dict.fromkeys(i for i in shown if i != target)
    for name in cand.SOURCES:
        column = columns.items.get(f"src_{name}")
        if column is None or per_source <= 0:
            continue
        depth = min(pool, n)
        top = np.argpartition(-column, depth - 1)[:depth] if depth < n else np.arange(n)
        drawn: list[int] = [
            int(i) for i in top.tolist() if column[i] > 0 and i != target and i not in excluded
        ]
        for i in rng.sample(drawn, min(per_source, len(drawn))):
            negatives[i] = None
    for _ in range(random_negatives):
        i = rng.randrange(n)
        if i != target and i not in excluded:
            negatives[i] = None

    def row(i: int) -> dict[str, float]:
        return {**{k: float(v[i]) for k, v in columns.items.items()}, **columns.user}

    return [(row(target), True), *((row(i), False) for i in negatives)]


def in_top(score: np.ndarray, target: int, excluded: Collection[int], k: int) -> bool:
    """Would ``score`` rank the target in the top ``k`` of the items not excluded (ties
    share their places: half of the tied items count as ahead)?"""
    allowed = score.copy()
    if excluded:
        allowed[[i for i in excluded if i != target]] = -np.inf
    mine = allowed[target]
    ahead = int((allowed > mine).sum()) + (int((allowed == mine).sum()) - 1) // 2
    return ahead < k


def warp_negative(
    score: np.ndarray,
    target: int,
    excluded: Collection[int],
    margin: float,
    tries: int,
    rng: random.Random,
) -> tuple[int, float] | None:
    """WARP's negative for one event: items drawn at random (never the target nor an
    excluded one) until one the head ranks above the target or within ``margin`` of it
    (``score``: the head's linear score per catalog item), at most ``tries`` draws. Returns
    that item and the pair's weight L(rank), rank estimated from the draws it took (the
    fewer, the further down the target is): the harmonic number of ``allowed // draws``
    (allowed: the items neither excluded nor the target); None when every draw ranked
    below the target's margin."""
    n = int(score.shape[0])
    allowed = n - len({i for i in excluded if 0 <= i < n and i != target}) - 1
    if allowed <= 0:
        return None
    bar = float(score[target]) - margin
    for draw in range(1, tries + 1):
        i = rng.randrange(n)
        while i == target or i in excluded:
            i = rng.randrange(n)
        if score[i] > bar:
            rank = max(allowed // draw, 1)
            return i, float(sum(1.0 / r for r in range(1, rank + 1)))
    return None


@dataclass(slots=True)
class BlendLearner:
    """The learned blend's head, learnt from a replay test-then-train."""

    trainer: propensity.Trainer
    refresh_every: int = 100
    shown_negatives: bool = False
    per_source: int = 0
    pool: int = 10
    random_negatives: int = 5
    warp_tries: int = 0  # > 0: WARP (one violating negative per event) instead
    warp_margin: float = 1.0
    rng: random.Random = field(default_factory=lambda: random.Random(42))
    # > 0: at each refresh the learnt weights become the head only if their
    # prequential HitRate@k over the last gate_window tested events is at least the
    # prior's (else the head is the prior: None).
    gate_window: int = 0
    prior: PropensityModel | None = None
    k: int = 10
    head: PropensityModel | None = None  # None: the strategy's prior
    tested: int = 0
    # Per tested event in the gate's window: (the learnt weights hit, the prior hit).
    hits: deque[tuple[bool, bool]] = field(default_factory=deque)
    gated: int = 0  # refreshes that kept the prior

    @classmethod
    def from_settings(
        cls, cfg: LearningSettings, prior: Mapping[str, float] | None = None, k: int = 10
    ) -> BlendLearner:
        """The learner of a head whose strategy's prior blend weights (source -> weight)
        are ``prior``; with ``blend_warm_start`` its learner starts from them, with
        ``blend_gate_window`` the head is the prior while it hits the top ``k`` more
        often."""
        prior_head = PropensityModel.prior(prior) if prior else None
        start = prior_head.weights if prior_head and cfg.blend_warm_start else None
        own = cfg.model_copy(update={"propensity_learning_rate": cfg.blend_learning_rate})
        return cls(
            trainer=propensity.Trainer.from_settings(own, start),
            refresh_every=cfg.blend_refresh_every,
            shown_negatives=cfg.blend_shown_negatives,
            per_source=cfg.blend_source_negatives,
            pool=cfg.blend_source_pool,
            random_negatives=cfg.blend_random_negatives,
            warp_tries=cfg.blend_warp_tries,
            warp_margin=cfg.blend_warp_margin,
            gate_window=cfg.blend_gate_window if prior_head else 0,
            prior=prior_head,
            k=k,
            rng=random.Random(cfg.seed),
        )

    def learn(
        self, ranking: Ranking, target: int, shown: Collection[int], excluded: Collection[int]
    ) -> None:
        """Learn one tested event from the ranking made before it (its features), the
        target's catalog position and the positions that ranking showed."""
        columns = ranking.features
        if columns is None:
            return
        learnt = self.current().linear(columns)
        if self.gate_window > 0 and self.prior is not None:
            self.hits.append(
                (
                    in_top(learnt, target, excluded, self.k),
                    in_top(self.prior.linear(columns), target, excluded, self.k),
                )
            )
            if len(self.hits) > self.gate_window:
                self.hits.popleft()
        if self.warp_tries > 0:
            self._learn_warp(learnt, columns, target, excluded)
        else:
            self._learn_sampled(columns, target, shown, excluded)
        self.tested += 1
        if self.refresh_every > 0 and self.tested % self.refresh_every == 0:
            self.refresh()

    def refresh(self) -> None:
        """The head from now on: the learnt weights as a published version, unless the
        gate finds the prior hitting more often over its window."""
        learnt_hits = sum(mine for mine, _ in self.hits)
        prior_hits = sum(theirs for _, theirs in self.hits)
        if self.gate_window > 0 and learnt_hits < prior_hits:
            self.head = None
            self.gated += 1
        else:
            self.head = PropensityModel.from_version(self.trainer.cut_version())

    def current(self) -> PropensityModel:
        """The learner's weights now (the head is refreshed from them every
        ``refresh_every`` events)."""
        model = self.trainer.model
        return PropensityModel("", dict(model.weights), float(model.intercept))

    def _learn_warp(
        self,
        score: np.ndarray,
        columns: FeatureColumns,
        target: int,
        excluded: Collection[int],
    ) -> None:
        found = warp_negative(
            score,
            target,
            excluded,
            self.warp_margin,
            self.warp_tries,
            self.rng,
        )
        if found is None:
            return
        negative, weight = found
        rows = columns.rows([target, negative])
        self._learn_pair(rows[0], rows[1], weight)

    def _learn_sampled(
        self,
        columns: FeatureColumns,
        target: int,
        shown: Collection[int],
        excluded: Collection[int],
    ) -> None:
        rows = examples_for(
            columns,
            target,
            shown if self.shown_negatives else (),
            excluded,
            self.per_source,
            self.pool,
            self.random_negatives,
            self.rng,
        )
        positive = rows[0][0]
        for negative, _ in rows[1:]:
            self._learn_pair(positive, negative, 1.0)

    def _learn_pair(
        self, positive: dict[str, float], negative: dict[str, float], weight: float
    ) -> None:
        # Pairwise: the logistic loss of "the chosen item outscores this one", both
        # ways round so the intercept stays 0. A linear head ranks by w . x, so the
        # weights learnt on differences rank exactly as they were trained to.
        ahead = {k: v - negative.get(k, 0.0) for k, v in positive.items()}
        self.trainer.learn_one("", "", 1.0, 0, ahead, weight)
        self.trainer.learn_one("", "", 0.0, 0, {k: -v for k, v in ahead.items()}, weight)
