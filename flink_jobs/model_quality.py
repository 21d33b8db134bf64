"""Live model quality: prequential evaluation and drift detection (pure + River).

Before the learner sees an interaction, the model ranks the interacted item against
``candidates`` items drawn from the items it knows; a hit is a rank within the top
``k``. This "sampled HitRate@k" is the prequential (test-then-train) estimate of how
well the model would have recommended that very interaction. River's ADWIN watches the
hit stream: its window mean is the reported rate, and a detected change in it is a
drift alarm (logged and counted in ``pz_model_drift_alarms_total``).

Only every ``every``-th interaction is evaluated (deterministically, by count): the
estimate needs a sample, not every event, and evaluating costs more than learning.
Candidates are drawn with replacement: drawing without replacement permutes the whole
item range per call, which grows with the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from river import drift

from flink_jobs.learning import OnlineMF


@dataclass
class PrequentialMonitor:
    k: int = 10
    candidates: int = 100
    seed: int = 7
    every: int = 1
    seen: int = 0
    evaluated: int = 0
    hits: int = 0
    alarms: int = 0
    detector: drift.ADWIN = field(default_factory=drift.ADWIN)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def evaluate(self, model: OnlineMF, user: str, item: str) -> bool | None:
        """Score one interaction before learning it; None if the model cannot yet
        (a new user or item, or too few known items)."""
        self.seen += 1
        if self.every > 1 and self.seen % self.every:
            return None
        user_vector = model.user_vector(user)
        if user_vector is None:
            return None
        return self._judge(user_vector, model.item_index.get(item), model.item_matrix)

    def evaluate_vector(
        self, user_vector: np.ndarray, row: int | None, matrix: np.ndarray
    ) -> bool | None:
        """:meth:`evaluate` for a partitioned model: the user's factors, the item's row
        in ``matrix`` (None: unknown item) and the item factors the user side knows."""
        self.seen += 1
        if self.every > 1 and self.seen % self.every:
            return None
        return self._judge(user_vector, row, matrix)

    def _judge(self, user_vector: np.ndarray, row: int | None, matrix: np.ndarray) -> bool | None:
        n = len(matrix)
        if row is None or n <= self.candidates:
            return None
        others = self.rng.integers(0, n, size=self.candidates)
        others = others[others != row]
        target = float(matrix[row] @ user_vector)
        better = int(np.count_nonzero(matrix[others] @ user_vector > target))
        hit = better < self.k
        self.evaluated += 1
        self.hits += hit
        self.detector.update(float(hit))
        if self.detector.drift_detected:
            self.alarms += 1
        return hit

    @property
    def drift_detected(self) -> bool:
        return bool(self.detector.drift_detected)

    @property
    def hit_rate(self) -> float:
        """The rate over ADWIN's current window (adapts after a drift)."""
        return float(self.detector.estimation)
