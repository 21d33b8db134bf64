"""The one latency summary of the benchmarks (a module of its own: the load generator
processes import it without the stack's dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["latency_summary"]


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
