"""The model-version record: what the job publishes and serving loads.

A version travels as a ``model:<name>`` row on the ``feature_updates`` changelog (see
``personalization/feature_updates.py``), the writer stores it in the registry
(``personalization/model_registry.py``), serving's ``ModelWatcher`` loads the active one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "GATE_PAIRS",
    "HEAD_PAIR_ACCURACY",
    "PRIOR_PAIR_ACCURACY",
    "PROPENSITY_MODEL",
    "SHARDS_PARAM",
    "SHARD_PARAM",
    "ModelVersion",
    "averaged",
    "shard_of",
    "source_feature_weights",
]

# The model the job trains from exposures and serving ranks with (one name, both sides).
PROPENSITY_MODEL = "propensity"

# The learned blend's gate, in a propensity version's metrics: over the (clicked, not
# clicked) pairs of the slates shown lately (about ``learning.blend_gate_window`` of
# them, GATE_PAIRS), the share the model ordered right and the share the prior blend
# did (flink_jobs/propensity.Trainer.judge_slate). Serving ranks learned_v1 with the
# model only where it beats the prior (serving/propensity.PropensityModel.beats_prior).
GATE_PAIRS = "gate_pairs"
HEAD_PAIR_ACCURACY = "head_pair_accuracy"
PRIOR_PAIR_ACCURACY = "prior_pair_accuracy"


def source_feature_weights(blend: Mapping[str, float]) -> dict[str, float]:
    """A blend's weights (candidate source -> weight) as weights of the features serving
    logs with each shown item, where source ``s``'s score is ``src_<s>``
    (serving/propensity.py): the prior head in serving and the prior the job's gate
    judges against."""
    return {f"src_{source}": float(weight) for source, weight in blend.items()}


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One published version: parameters plus what the trainer measured when it was cut."""

    model: str
    version: str
    created_ms: int
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(raw: str | bytes) -> ModelVersion:
        data = json.loads(raw)
        return ModelVersion(
            model=str(data["model"]),
            version=str(data["version"]),
            created_ms=int(data["created_ms"]),
            examples=int(data.get("examples", 0)),
            metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
            params=dict(data.get("params") or {}),
        )


# --- sharded learners: a model trained by several keyed shards, published as one ---
#
# A learner keyed by a constant runs on one subtask whatever the job's parallelism. So
# the job trains ``shards`` copies, each on the examples whose key hashes to it, and
# each publishes its own version with ``params["shard"]`` / ``params["shards"]``. The
# registry keeps the newest version of every shard and publishes their average,
# weighted by examples, as the model's version: one-shot parameter averaging (Mann et
# al. 2009, Zinkevich et al. 2010), sound for the convex, linear models it is used for.
SHARD_PARAM = "shard"
SHARDS_PARAM = "shards"


def shard_of(version: ModelVersion) -> tuple[int, int] | None:
    """``(shard, shards)`` of a shard's version; None for a whole model's version."""
    if SHARD_PARAM not in version.params:
        return None
    return int(version.params[SHARD_PARAM]), int(version.params.get(SHARDS_PARAM, 1))


def _weighted_mean(values: list[tuple[Any, float]]) -> Any:
    """The weighted mean of numbers, or of dicts of them key by key (a key a shard
    lacks counts as 0: a linear model's absent weight)."""
    total = sum(w for _, w in values) or 1.0
    if all(isinstance(v, dict) for v, _ in values):
        keys = sorted({k for v, _ in values for k in v})
        return {k: _weighted_mean([(v.get(k, 0.0), w) for v, w in values]) for k in keys}
    return round(sum(float(v) * w for v, w in values) / total, 8)


def averaged(shards: list[ModelVersion]) -> ModelVersion:
    """One version of the model from the newest version of each shard: parameters and
    metrics averaged, weighted by each shard's examples; its id counts all examples
    (``v<examples>``), so it grows as any shard learns and a replayed shard version
    (same examples) yields the same record."""
    if not shards:
        raise ValueError("no shard versions to average")
    weights = [float(max(v.examples, 1)) for v in shards]
    weighted = list(zip(shards, weights, strict=True))
    params_keys = sorted(
        {k for v in shards for k in v.params if k not in (SHARD_PARAM, SHARDS_PARAM)}
    )
    params = {
        key: _weighted_mean([(v.params[key], w) for v, w in weighted if key in v.params])
        for key in params_keys
    }
    params[SHARDS_PARAM] = len(shards)
    metric_names = sorted({m for v in shards for m in v.metrics})
    metrics = {
        name: _weighted_mean(
            [
                (v.metrics[name], w)
                for v, w in zip(shards, weights, strict=True)
                if name in v.metrics
            ]
        )
        for name in metric_names
    }
    examples = sum(v.examples for v in shards)
    return ModelVersion(
        model=shards[0].model,
        version=f"v{examples:09d}",
        created_ms=max(v.created_ms for v in shards),
        examples=examples,
        metrics=metrics,
        params=params,
    )
