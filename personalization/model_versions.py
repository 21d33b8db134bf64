"""The model-version record: what the job publishes and serving loads.

A version travels as a ``model:<name>`` row on the ``feature_updates`` changelog (see
``personalization/feature_updates.py``), the writer stores it in the registry
(``personalization/model_registry.py``), serving's ``ModelWatcher`` loads the active one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PROPENSITY_MODEL", "ModelVersion"]

# The model the job trains from exposures and serving ranks with (one name, both sides).
PROPENSITY_MODEL = "propensity"


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
