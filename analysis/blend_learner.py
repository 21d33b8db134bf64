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
- negatives: ``random_negatives`` items drawn at random from the catalog. Hard
  negatives stay off by default (``blend_shown_negatives``, ``blend_source_negatives``):
  the items the ranking showed and the sources' best candidates taught the head that a
  source's top candidates are bad (the chosen item is mostly outside them) and it
  ranked at half of hybrid_v1 (HitRate@10 0.050 vs 0.118, first 6,000 MovieLens 100K
  events); so did top-weighted variants (WARP without a margin, LambdaRank@10 pairs).
  A pointwise logistic loss against the head's own top k chased its tail too (ROC AUC
  0.50).

The learner starts from the strategy's prior weights (``blend_warm_start``), so its
first versions rank like that blend.

The head the ranking uses is refreshed every ``refresh_every`` tested events through
``Trainer.cut_version`` -> ``PropensityModel.from_version``, the path a published version
takes to serving; until the first refresh the strategy ranks with its prior weights.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from flink_jobs import propensity
from personalization.settings import LearningSettings
from serving import candidates as cand
from serving.propensity import FeatureColumns, PropensityModel
from serving.ranking import Ranking

__all__ = ["BlendLearner", "examples_for"]


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


@dataclass(slots=True)
class BlendLearner:
    """The learned blend's head, learnt from a replay test-then-train."""

    trainer: propensity.Trainer
    refresh_every: int = 100
    shown_negatives: bool = False
    per_source: int = 0
    pool: int = 10
    random_negatives: int = 5
    rng: random.Random = field(default_factory=lambda: random.Random(42))
    head: PropensityModel | None = None  # None: the strategy's prior
    tested: int = 0

    @classmethod
    def from_settings(
        cls, cfg: LearningSettings, prior: Mapping[str, float] | None = None
    ) -> BlendLearner:
        """The learner of a head whose strategy's prior blend weights (source -> weight)
        are ``prior``; with ``blend_warm_start`` its learner starts from them."""
        start = PropensityModel.prior(prior).weights if prior and cfg.blend_warm_start else None
        return cls(
            trainer=propensity.Trainer.from_settings(cfg, start),
            refresh_every=cfg.blend_refresh_every,
            shown_negatives=cfg.blend_shown_negatives,
            per_source=cfg.blend_source_negatives,
            pool=cfg.blend_source_pool,
            random_negatives=cfg.blend_random_negatives,
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
            # Pairwise: the logistic loss of "the chosen item outscores this one", both
            # ways round so the intercept stays 0. A linear head ranks by w . x, so the
            # weights learnt on differences rank exactly as they were trained to.
            ahead = {k: v - negative.get(k, 0.0) for k, v in positive.items()}
            self.trainer.learn_one("", "", 1.0, 0, ahead)
            self.trainer.learn_one("", "", 0.0, 0, {k: -v for k, v in ahead.items()})
        self.tested += 1
        if self.refresh_every > 0 and self.tested % self.refresh_every == 0:
            self.head = PropensityModel.from_version(self.trainer.cut_version())
