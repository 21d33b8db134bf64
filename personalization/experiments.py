"""A/B experiments: definitions and deterministic, sticky assignment (pure).

Experiments live in a YAML file (``serving.experiments_file``)::

    experiments:
      - name: ranking-2026-11
        start: 2026-11-01T00:00:00Z      # optional; inactive before
        stop: 2026-12-01T00:00:00Z       # optional; inactive from then on
        salt: ""                         # optional; change it to reshuffle users
        segments: [buyer, cluster:3]     # optional; only users in one of these
        variants:
          - {name: control, strategy: blend_v1, weight: 45}
          - {name: hybrid,  strategy: hybrid_v1, weight: 45}
          - {name: holdout, strategy: trending, weight: 10}

A user's variant is a pure function of (experiment name, salt, user id): a SHA-256 of
those, read as a number in [0, 1), picks the variant by cumulative weight. Every server
process and every session of the user agrees without shared state. The first active
experiment (in file order) whose traffic includes the user decides the strategy; a
variant with strategy ``trending`` is a holdout that gets non-personalized content.

Targeting: an experiment with ``segments`` takes only users in at least one of them:
rule segments by name (``personalization/segments.yaml``) or a learned cluster as
``cluster:<id>`` (``personalization.segments.user_segments``), as of the user's row when
the request is served. A user can change segments, and with them experiments; the
assignment within an experiment stays the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

HOLDOUT_STRATEGY = "trending"
# A rule segment's name or a learned cluster (personalization/segments.py).
_SEGMENT = re.compile(r"^([a-z][a-z0-9_]{0,47}|cluster:[0-9]{1,4})$")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    strategy: str
    weight: float


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    start_ms: int | None = None
    stop_ms: int | None = None
    salt: str = ""
    # Targeting: only users in one of these segments take part; empty = everyone.
    segments: frozenset[str] = frozenset()

    def targets(self, user_segments: Collection[str]) -> bool:
        return not self.segments or not self.segments.isdisjoint(user_segments)

    def active(self, now_ms: int) -> bool:
        if self.start_ms is not None and now_ms < self.start_ms:
            return False
        return self.stop_ms is None or now_ms < self.stop_ms

    @property
    def control(self) -> Variant:
        """The first variant is the control the others are compared with."""
        return self.variants[0]


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    variant: str
    strategy: str


def bucket(experiment: str, salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, salt, user)."""
    digest = hashlib.sha256(f"{experiment}\x1f{salt}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, user_id: str) -> Variant:
    point = bucket(experiment.name, experiment.salt, user_id)
    total = sum(v.weight for v in experiment.variants)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.weight / total
        if point < edge:
            return variant
    return experiment.variants[-1]


def assignment_for(
    experiments: list[Experiment],
    user_id: str,
    now_ms: int,
    user_segments: Collection[str] = (),
) -> Assignment | None:
    """The first active experiment that targets the user decides (``user_segments``: the
    user's rule segments and ``cluster:<id>``, empty for a user without a row)."""
    for experiment in experiments:
        if experiment.active(now_ms) and experiment.targets(user_segments):
            variant = assign(experiment, user_id)
            return Assignment(experiment.name, variant.name, variant.strategy)
    return None


def _time_ms(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def parse_experiments(data: Any) -> list[Experiment]:
    """Experiments from the decoded YAML; raises ValueError naming what is wrong."""
    if not data:
        return []
    entries = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("experiments file needs a top-level 'experiments' list")
    out = []
    names: set[str] = set()
    for entry in entries:
        name = str(entry.get("name", "")).strip()
        if not name or name in names:
            raise ValueError(f"experiment names must be unique and non-empty: {name!r}")
        names.add(name)
        variants = tuple(
            Variant(str(v["name"]), str(v["strategy"]), float(v.get("weight", 1)))
            for v in entry.get("variants", [])
        )
        if len(variants) < 2 or any(v.weight <= 0 for v in variants):
            raise ValueError(f"experiment {name}: needs ≥ 2 variants with positive weights")
        if len({v.name for v in variants}) != len(variants):
            raise ValueError(f"experiment {name}: variant names must be unique")
        segments = entry.get("segments") or []
        if not isinstance(segments, list) or not all(
            isinstance(seg, str) and _SEGMENT.match(seg) for seg in segments
        ):
            raise ValueError(
                f"experiment {name}: segments must be a list of segment names or "
                f"cluster:<id>, got {segments!r}"
            )
        out.append(
            Experiment(
                name=name,
                variants=variants,
                start_ms=_time_ms(entry.get("start")),
                stop_ms=_time_ms(entry.get("stop")),
                salt=str(entry.get("salt", "")),
                segments=frozenset(segments),
            )
        )
    return out


def load_experiments(path: str | Path) -> list[Experiment]:
    file = Path(path)
    if not file.is_file():
        return []
    return parse_experiments(yaml.safe_load(file.read_text()))
