"""The one latency summary of the benchmarks (a module of its own: the load generator
processes import it without the stack's dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["histogram_summary", "latency_summary"]


def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """count, p50, p90, p99, p99.9, max, mean in milliseconds (nearest-rank percentiles)."""
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {"count": 0}
    pct = np.percentile(arr, [50, 90, 99, 99.9], method="inverted_cdf")
    return {
        "count": int(arr.size),
        "p50_ms": round(float(pct[0]), 3),
        "p90_ms": round(float(pct[1]), 3),
        "p99_ms": round(float(pct[2]), 3),
        "p999_ms": round(float(pct[3]), 3),
        "max_ms": round(float(arr.max()), 3),
        "mean_ms": round(float(arr.mean()), 3),
    }


def histogram_summary(buckets: dict[float, float]) -> dict[str, Any]:
    """count, p50, p90, p99 in milliseconds from a Prometheus histogram's cumulative
    bucket counts (``le`` upper bound in seconds -> count, ``+Inf`` as ``math.inf``),
    typically the difference of two scrapes. A quantile is the upper bound of the bucket
    it falls in (no interpolation: the figure is an upper bound at the buckets'
    resolution); one in the ``+Inf`` bucket is reported as ``None``."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return {"count": 0}
    total = buckets[bounds[-1]]
    out: dict[str, Any] = {"count": int(total)}
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        rank = q * total
        bound = next(b for b in bounds if buckets[b] >= rank)
        out[name] = None if np.isinf(bound) else round(bound * 1000.0, 3)
    return out
