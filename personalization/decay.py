"""Half-life decay: the one formula behind interests, trending and co-visitation weights.

A weight observed ``elapsed`` ago counts ``2 ** (-elapsed / half_life)`` of its value now.
Scores that decay are kept as (value, reference time) and brought forward only when they
are read or added to, so no timer has to touch them.
"""

from __future__ import annotations

import math

__all__ = ["decay_factor", "decayed"]


def decay_factor(elapsed_ms: float, half_life_s: float) -> float:
    """What is left of a weight after ``elapsed_ms`` (negative: it grows back)."""
    if math.isinf(half_life_s):
        return 1.0
    return math.pow(2.0, -elapsed_ms / (half_life_s * 1000.0))


def decayed(value: float, ref_ms: int, now_ms: int, half_life_s: float) -> float:
    """``value`` as of ``ref_ms``, brought to ``now_ms``."""
    return value * decay_factor(now_ms - ref_ms, half_life_s)
