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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from river import linear_model, metrics, optim

from personalization.compact_pickle import compact_pickle
from personalization.model_registry import PROPENSITY_MODEL, ModelVersion
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


@dataclass(slots=True)
class Trainer:
    model: linear_model.LogisticRegression
    auc: metrics.ROCAUC = field(default_factory=lambda: metrics.ROCAUC(n_thresholds=100))
    log_loss: metrics.LogLoss = field(default_factory=metrics.LogLoss)
    examples: int = 0
    positives: int = 0
    last_time_ms: int = 0
    published: int = 0  # examples at the last published version


def new_trainer(cfg: LearningSettings) -> Trainer:
    model = linear_model.LogisticRegression(
        optimizer=optim.SGD(cfg.propensity_learning_rate), l2=cfg.propensity_l2
    )
    return Trainer(model=model)


def learn(trainer: Trainer, example: Example) -> float:
    """Predict (for the metrics), then learn; returns the prediction made before learning."""
    x = {k: v for k, v in example.features.items() if math.isfinite(v)}
    p = float(trainer.model.predict_proba_one(x).get(True, 0.5))
    trainer.auc.update(example.clicked, p)
    trainer.log_loss.update(example.clicked, p)
    trainer.model.learn_one(x, example.clicked)
    trainer.examples += 1
    trainer.positives += int(example.clicked)
    trainer.last_time_ms = max(trainer.last_time_ms, example.time_ms)
    return p


def due(trainer: Trainer, every: int) -> bool:
    return every > 0 and trainer.examples - trainer.published >= every


def quality(trainer: Trainer) -> dict[str, float]:
    n = max(trainer.examples, 1)
    return {
        "roc_auc": round(float(trainer.auc.get()), 6),
        "log_loss": round(float(trainer.log_loss.get()), 6),
        "positive_rate": round(trainer.positives / n, 6),
    }


def cut_version(trainer: Trainer) -> ModelVersion:
    """The current weights as a registry version (marks it published)."""
    trainer.published = trainer.examples
    weights = {str(k): round(float(v), 8) for k, v in sorted(trainer.model.weights.items())}
    return ModelVersion(
        model=MODEL_NAME,
        version=f"v{trainer.examples:09d}",
        created_ms=trainer.last_time_ms,
        examples=trainer.examples,
        metrics=quality(trainer),
        params={"weights": weights, "intercept": round(float(trainer.model.intercept), 8)},
    )
