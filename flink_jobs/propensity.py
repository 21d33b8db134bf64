"""The click-propensity model (pure): River logistic regression on the system's own
recommendations.

Serving logs, for every item it shows, the features it ranked with
(``serving/propensity.py``: the candidate sources' scores, price, fatigue, a few user
flags) in the exposure record. The job's attribution join labels each shown item once
``learning.propensity_label_window_s`` of event time has passed after the exposure:
clicked (viewed / clicked / carted / bought through that recommendation) or not. The
trainer evaluates each example before learning it (prequential ROC AUC and log loss)
and cuts a :class:`ModelVersion` every ``learning.propensity_publish_every`` examples.

Training on logged features rather than recomputing them in the job is the usual
guard against training/serving skew: the model learns from exactly what serving saw.

Versions are a deterministic function of the example stream (ids count examples,
times are event times), so a job restored from a checkpoint re-publishes identical
versions: the registry treats that as a no-op.

:class:`Trainer` plays the learner role (``flink_jobs/learner.py``) over its inputs, the
logged features ``x``: ``learn_one(user, item, y, t, x)`` learns that the shown item was
clicked (``y > 0``) or not. The functions below (:func:`learn`, :func:`due`,
:func:`cut_version`, ...) are what the job's operator calls, one per method.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from river import linear_model, metrics, optim

from personalization.compact_pickle import compact_pickle
from personalization.model_versions import (
    GATE_PAIRS,
    HEAD_PAIR_ACCURACY,
    PRIOR_PAIR_ACCURACY,
    PROPENSITY_MODEL,
    SHARD_PARAM,
    SHARDS_PARAM,
    ModelVersion,
)
from personalization.settings import LearningSettings

MODEL_NAME = PROPENSITY_MODEL


@compact_pickle
@dataclass(frozen=True, slots=True)
class Example:
    """One shown item and whether the user acted on it."""

    rec_id: str
    item_id: str
    features: dict[str, float]
    clicked: bool
    time_ms: int


def _finite(features: Mapping[str, float] | None) -> dict[str, float]:
    # A copy (River must not see, nor we change, the caller's dict) without NaN / inf,
    # which would poison the weights for good.
    return {k: v for k, v in (features or {}).items() if math.isfinite(v)}


# The fields are the keyed state the job pickles: keep them (and the class name) so a
# checkpoint restores into a newer job; fields appended later (the gate's) load from an
# older checkpoint with their defaults (compact_pickle).
@compact_pickle
@dataclass(slots=True)
class Trainer:
    """The click-propensity learner with its prequential metrics.

    Examples
    --------
    >>> trainer = Trainer.from_settings(LearningSettings())
    >>> for n in range(200):
    ...     trainer.learn_one("u", f"i{n}", float(n % 2), n, {"src_cf": float(n % 2)})
    >>> trainer.rank("u", ["a", "b"], {"a": {"src_cf": 0.0}, "b": {"src_cf": 1.0}})
    ['b', 'a']
    """

    model: linear_model.LogisticRegression
    auc: metrics.ROCAUC = field(default_factory=lambda: metrics.ROCAUC(n_thresholds=100))
    log_loss: metrics.LogLoss = field(default_factory=metrics.LogLoss)
    examples: int = 0
    positives: int = 0
    last_time_ms: int = 0
    published: int = 0  # examples at the last published version
    # The gate's evidence (:meth:`judge_slate`): over the shown slates' (clicked, not
    # clicked) pairs, decayed, how many the head and the prior each ordered right.
    pairs: float = 0.0
    head_pairs_right: float = 0.0
    prior_pairs_right: float = 0.0

    @classmethod
    def from_settings(
        cls, cfg: LearningSettings, initial_weights: Mapping[str, float] | None = None
    ) -> Trainer:
        """A fresh learner; ``initial_weights`` (feature -> weight) warm-start it, e.g.
        from a blend's configured weights, so it starts ranking like that blend."""
        model = linear_model.LogisticRegression(
            optimizer=optim.SGD(cfg.propensity_learning_rate), l2=cfg.propensity_l2
        )
        for name, weight in _finite(initial_weights).items():
            model._weights[name] = weight
        return cls(model=model)

    # --- the learner role: ids are not features, the logged ``x`` is everything ---

    def learn_one(
        self,
        user: str,
        item: str,
        y: float,
        t: int = 0,
        x: Mapping[str, float] | None = None,
        weight: float = 1.0,
    ) -> None:
        """Learn one shown item: clicked when ``y > 0``, with its logged features ``x``;
        ``weight`` scales its gradient step (a ranking loss's weight of the pair)."""
        self._learn(_finite(x), y > 0, t, weight)

    def predict_one(self, user: str, item: str, x: Mapping[str, float] | None = None) -> float:
        """P(click) of an item shown with features ``x`` (no features: the base rate)."""
        return self._predict(_finite(x))

    def rank(
        self,
        user: str,
        items: Sequence[str],
        x: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[str]:
        """``items`` by P(click) given each item's features in ``x``, best first; ties
        keep their given order."""
        per_item = x or {}
        scores = [self._predict(_finite(per_item.get(item))) for item in items]
        order = sorted(range(len(items)), key=lambda n: -scores[n])
        return [items[n] for n in order]

    # --- the job's uses ---

    def judge_slate(
        self, examples: Sequence[Example], prior: Mapping[str, float], window: int
    ) -> None:
        """The gate's evidence from one shown slate, before learning it: each (clicked,
        not clicked) pair counts as right for the head, and for ``prior`` (feature ->
        weight, the blend the head replaces), when it scores the clicked item higher
        (a tie: half). Sums decay by ``1 - 1 / window`` per pair, so they describe about
        the last ``window`` pairs."""
        clicked = [e for e in examples if e.clicked]
        skipped = [e for e in examples if not e.clicked]
        if not clicked or not skipped:
            return
        head = {id(e): self._predict(_finite(e.features)) for e in examples}
        base = {id(e): sum(w * e.features.get(k, 0.0) for k, w in prior.items()) for e in examples}
        keep = 1.0 - 1.0 / max(window, 1)
        for pos in clicked:
            for neg in skipped:
                self.pairs = self.pairs * keep + 1.0
                self.head_pairs_right = self.head_pairs_right * keep + _right(
                    head[id(pos)], head[id(neg)]
                )
                self.prior_pairs_right = self.prior_pairs_right * keep + _right(
                    base[id(pos)], base[id(neg)]
                )

    def learn_example(self, example: Example) -> float:
        """Predict (for the metrics), then learn; returns the prediction made before."""
        return self._learn(_finite(example.features), example.clicked, example.time_ms)

    def is_due(self, every: int) -> bool:
        """Have ``every`` examples been learnt since the last published version?"""
        return every > 0 and self.examples - self.published >= every

    def quality(self) -> dict[str, float]:
        n = max(self.examples, 1)
        out = {
            "roc_auc": round(float(self.auc.get()), 6),
            "log_loss": round(float(self.log_loss.get()), 6),
            "positive_rate": round(self.positives / n, 6),
        }
        if self.pairs > 0:
            out[GATE_PAIRS] = round(self.pairs, 3)
            out[HEAD_PAIR_ACCURACY] = round(self.head_pairs_right / self.pairs, 6)
            out[PRIOR_PAIR_ACCURACY] = round(self.prior_pairs_right / self.pairs, 6)
        return out

    def cut_version(self, shard: int | None = None, shards: int = 1) -> ModelVersion:
        """The current weights as a registry version (marks it published); with
        ``shard``, the version of that shard of ``shards`` (the registry publishes the
        average of the shards' newest versions)."""
        self.published = self.examples
        weights = {str(k): round(float(v), 8) for k, v in sorted(self.model.weights.items())}
        params: dict[str, object] = {
            "weights": weights,
            "intercept": round(float(self.model.intercept), 8),
        }
        version = f"v{self.examples:09d}"
        if shard is not None:
            params[SHARD_PARAM] = shard
            params[SHARDS_PARAM] = shards
            version = f"s{shard}-{version}"
        return ModelVersion(
            model=MODEL_NAME,
            version=version,
            created_ms=self.last_time_ms,
            examples=self.examples,
            metrics=self.quality(),
            params=params,
        )

    def _predict(self, x: dict[str, float]) -> float:
        return float(self.model.predict_proba_one(x).get(True, 0.5))

    def _learn(self, x: dict[str, float], clicked: bool, t: int, weight: float = 1.0) -> float:
        p = self._predict(x)
        self.auc.update(clicked, p)
        self.log_loss.update(clicked, p)
        self.model.learn_one(x, clicked, w=weight)
        self.examples += 1
        self.positives += int(clicked)
        self.last_time_ms = max(self.last_time_ms, t)
        return p


def _right(clicked: float, skipped: float) -> float:
    return 1.0 if clicked > skipped else 0.5 if clicked == skipped else 0.0


def new_trainer(cfg: LearningSettings) -> Trainer:
    return Trainer.from_settings(cfg)


def learn(trainer: Trainer, example: Example) -> float:
    """Predict (for the metrics), then learn; returns the prediction made before learning."""
    return trainer.learn_example(example)


def due(trainer: Trainer, every: int) -> bool:
    return trainer.is_due(every)


def quality(trainer: Trainer) -> dict[str, float]:
    return trainer.quality()


def cut_version(trainer: Trainer, shard: int | None = None, shards: int = 1) -> ModelVersion:
    """The current weights as a registry version (marks it published)."""
    return trainer.cut_version(shard, shards)


# --- shards: the learner is keyed by shard, never by a constant ---
#
# Examples are spread over ``shards`` keyed learners by a stable hash of their rec id,
# so the learner runs on as many subtasks as the job has (up to ``shards``) and a
# rescaled job finds every shard's state under the same key. Each shard publishes every
# ``publish_every / shards`` of its examples; the registry averages the shards' newest
# versions (``personalization/model_versions.py``).
SHARD_KEY_PREFIX = "propensity/"


def shard_key(rec_id: str, shards: int) -> str:
    """The key of the learner that learns the examples of ``rec_id``."""
    return f"{SHARD_KEY_PREFIX}{zlib.crc32(rec_id.encode()) % max(shards, 1)}"


def shard_of_key(key: str) -> int | None:
    """The shard number of a learner's key; None for the single learner of old jobs."""
    tail = key.removeprefix(SHARD_KEY_PREFIX)
    return int(tail) if tail != key and tail.isdigit() else None


def shard_publish_every(every: int, shards: int) -> int:
    """Examples between a shard's versions, so the model as a whole keeps its cadence."""
    return 0 if every <= 0 else max(1, math.ceil(every / max(shards, 1)))
