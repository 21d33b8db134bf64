"""Click propensity in serving: the features it is learned from, scoring, and hot swap.

The model is a logistic regression trained in the job (``flink_jobs/propensity.py``) on
the features this module computes for each shown item, which serving logs in the
exposure record. Scoring the whole catalog is one weighted sum of columns the hybrid
ranker has already computed (the candidate sources' normalised scores) plus a few
cheap ones, then a sigmoid: no per-item Python.

Features (all 0..1):

- ``src_<source>``: the normalised score of each candidate source (0 when the strategy
  does not use it),
- ``price``: log1p(price) / 8, capped at 1,
- ``shown_before``: times the item was shown to the user in the impression window,
  over the frequency cap,
- ``user_new``, ``user_buyer``, ``user_mobile``: the user's segments.

:class:`ModelWatcher` polls the registry's active pointer and swaps the model between
requests (one reference assignment, read once per request): publishing or rolling back
a version never restarts serving and never fails a request.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from personalization import metrics as pz_metrics
from personalization.model_registry import ModelRegistry
from personalization.model_versions import (
    GATE_PAIRS,
    HEAD_PAIR_ACCURACY,
    PRIOR_PAIR_ACCURACY,
    PROPENSITY_MODEL,
    ModelVersion,
    source_feature_weights,
)
from personalization.thread_names import NamedThread
from serving import candidates as cand
from serving.catalog_snapshot import CatalogSnapshot
from serving.online_features import UserFeatures

log = logging.getLogger(__name__)

MODEL_NAME = PROPENSITY_MODEL
ITEM_FEATURES = (*(f"src_{s}" for s in cand.SOURCES), "price", "shown_before")
USER_FEATURES = ("user_new", "user_buyer", "user_mobile")
FEATURES = ITEM_FEATURES + USER_FEATURES
PRICE_SCALE = 8.0
# The version name of a head built from configured blend weights, not learned.
PRIOR_VERSION = "prior"
_GATE_METRICS = (GATE_PAIRS, HEAD_PAIR_ACCURACY, PRIOR_PAIR_ACCURACY)


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """Per-item columns [n] and per-user scalars for one request."""

    items: dict[str, np.ndarray]
    user: dict[str, float]

    def rows(self, positions: Sequence[int]) -> list[dict[str, float]]:
        """The logged features of the items at ``positions`` (rounded, compact)."""
        picked = list(positions)
        if not picked:
            return []
        names = list(self.items)
        values = np.round(np.stack([self.items[name][picked] for name in names], axis=1), 4)
        return [{**dict(zip(names, row, strict=True)), **self.user} for row in values.tolist()]


def feature_columns(
    sources: Sequence[cand.SourceScores],
    catalog: CatalogSnapshot,
    user: UserFeatures | None,
    cap: int,
) -> FeatureColumns:
    n = len(catalog)
    zeros = np.zeros(n, dtype=np.float64)
    by_source = {s.source: s.scores for s in sources}
    items = {f"src_{name}": by_source.get(name, zeros) for name in cand.SOURCES}
    items["price"] = catalog.column("propensity_price", _price_feature)
    shown = zeros.copy()
    if user is not None and user.item_impressions:
        scale = float(max(cap, 1))
        for item, (times, _) in user.item_impressions.items():
            i = catalog.index_of.get(item)
            if i is not None:
                shown[i] = min(times / scale, 1.0)
    items["shown_before"] = shown
    segments = set(user.segments) if user is not None else set()
    user_flags = {
        "user_new": float("new" in segments),
        "user_buyer": float("buyer" in segments),
        "user_mobile": float("mobile" in segments),
    }
    return FeatureColumns(items, user_flags)


def _price_feature(catalog: CatalogSnapshot) -> np.ndarray:
    return np.minimum(np.log1p(np.maximum(catalog.price, 0.0)) / PRICE_SCALE, 1.0)


@dataclass(frozen=True, slots=True)
class PropensityModel:
    version: str
    weights: Mapping[str, float]
    intercept: float
    # The gate's evidence the job measured (personalization/model_versions.py): the
    # slate pairs seen lately and the share the model and the prior ordered right.
    # Empty for a version cut before the gate existed.
    gate: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def from_version(version: ModelVersion) -> PropensityModel:
        params = version.params
        weights = {str(k): float(v) for k, v in (params.get("weights") or {}).items()}
        intercept = float(params.get("intercept", 0.0))
        if not all(math.isfinite(w) for w in weights.values()) or not math.isfinite(intercept):
            raise ValueError(f"propensity {version.version}: non-finite weights")
        gate = {k: version.metrics[k] for k in _GATE_METRICS if k in version.metrics}
        return PropensityModel(version.version, weights, intercept, gate)

    def beats_prior(self, min_pairs: float) -> bool:
        """May the learned blend rank with this model instead of its prior? Only once it
        has ordered at least as many of the recent slate pairs right as the prior did,
        over at least ``min_pairs`` pairs. A version from before the gate (no evidence)
        is trusted, as it was then."""
        if not self.gate:
            return True
        pairs = self.gate.get(GATE_PAIRS, 0.0)
        head = self.gate.get(HEAD_PAIR_ACCURACY, 0.0)
        prior = self.gate.get(PRIOR_PAIR_ACCURACY, 1.0)
        return pairs >= min_pairs and head >= prior

    @staticmethod
    def prior(weights: Mapping[str, float]) -> PropensityModel:
        """The head before any model is learned: blend weights per candidate source as
        the weights of their ``src_`` features (its ranking is that blend's)."""
        sources = {s: w for s, w in weights.items() if s in cand.SOURCES}
        return PropensityModel(PRIOR_VERSION, source_feature_weights(sources), 0.0)

    def linear(self, columns: FeatureColumns) -> np.ndarray:
        """The linear score (log-odds) per catalog item: what the learned blend ranks by."""
        z = self.intercept + sum(self.weights.get(k, 0.0) * v for k, v in columns.user.items())
        first = next(iter(columns.items.values()))
        total = np.full(first.shape[0], z, dtype=np.float64)
        for name, column in columns.items.items():
            w = self.weights.get(name, 0.0)
            if w:
                total += w * column
        return total

    def score(self, columns: FeatureColumns) -> np.ndarray:
        """P(click) per catalog item (sigmoid of the linear score)."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.linear(columns), -30.0, 30.0)))


class ModelWatcher:
    """Follows the registry's active propensity version in a background thread.

    ``owned_client``: the Redis client ``registry`` reads through, when the watcher alone
    uses it; :meth:`stop` closes it.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        refresh_s: float,
        owned_client: redis.Redis | None = None,
    ) -> None:
        self._registry = registry
        self._owned_client = owned_client
        self._refresh_s = refresh_s
        self._current: PropensityModel | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0

    @property
    def current(self) -> PropensityModel | None:
        return self._current

    def refresh(self) -> bool:
        """Load the active version if it changed; True on a swap. Never raises."""
        try:
            pointer = self._registry.active(MODEL_NAME)
            if pointer is None:
                return False
            current = self._current
            if current is not None and current.version == pointer.version:
                return False
            model = PropensityModel.from_version(self._registry.get(MODEL_NAME, pointer.version))
        except Exception as exc:  # Redis down, a bad record: keep serving the model we have
            log.warning("propensity model refresh failed: %s", exc)
            return False
        self._current = model
        self.swaps += 1
        pz_metrics.model_metrics().set_version(MODEL_NAME, model.version)
        log.info("propensity model %s in use (%s)", model.version, pointer.by)
        return True

    def start(self) -> ModelWatcher:
        self.refresh()
        self._thread = NamedThread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owned_client is not None:
            self._owned_client.close()
