"""Retry delays: exponential backoff with full jitter.

Retry ``n`` (1 = the first retry) waits a uniform random time in
``[0, min(cap, base * 2**(n-1))]``. Full jitter rather than a fixed schedule so the
retries of many triggers that failed together (an endpoint restarting) spread out
instead of arriving at the endpoint again in one burst.
"""

from __future__ import annotations

import random

__all__ = ["ceiling", "delay"]


def ceiling(retry: int, base_s: float, cap_s: float) -> float:
    """The largest wait before retry ``retry`` (>= 1)."""
    if retry < 1:
        raise ValueError("retry counts from 1")
    # min() before the power would overflow for a large retry number.
    exponent = min(retry - 1, 62)
    return float(min(cap_s, base_s * (2**exponent)))


def delay(retry: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """A random wait before retry ``retry``: uniform in ``[0, ceiling]``."""
    return (rng or random).uniform(0.0, ceiling(retry, base_s, cap_s))
