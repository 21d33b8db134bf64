"""A/B results: per-variant rates with confidence intervals and significance (pure).

Inputs are per-variant totals (users exposed, impressions, clicks, conversions,
revenue). Rates get Wilson score intervals; a variant is compared with the control by
a two-proportion z-test (two-sided) and by the Bayesian probability that its rate beats
the control's (Beta(1+successes, 1+failures) posteriors, Monte Carlo with a fixed seed
so the figure is reproducible). Revenue per user gets a normal-approximation interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class VariantTotals:
    variant: str
    users: int
    impressions: int
    clicks: int
    conversions: int
    revenue: float
    revenue_sq: float = 0.0  # sum over users of (revenue of the user)^2


@dataclass(frozen=True, slots=True)
class Rate:
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Comparison:
    metric: str
    variant: str
    control: str
    lift: float  # relative: (variant - control) / control
    z: float
    p_value: float
    prob_beats_control: float


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    if trials <= 0:
        return Rate(0.0, 0.0, 0.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Rate(p, max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """z and two-sided p-value for H0: p1 == p2 (pooled variance)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def prob_beats(s1: int, n1: int, s2: int, n2: int, draws: int = 20_000, seed: int = 7) -> float:
    """P(rate1 > rate2) under independent Beta(1 + s, 1 + n - s) posteriors."""
    rng = np.random.default_rng(seed)
    a = rng.beta(1 + s1, 1 + max(0, n1 - s1), draws)
    b = rng.beta(1 + s2, 1 + max(0, n2 - s2), draws)
    return float(np.mean(a > b))


def revenue_per_user(t: VariantTotals, z: float = Z95) -> Rate:
    if t.users <= 0:
        return Rate(0.0, 0.0, 0.0)
    mean = t.revenue / t.users
    variance = max(0.0, t.revenue_sq / t.users - mean * mean)
    half = z * math.sqrt(variance / t.users) if t.users > 1 else 0.0
    return Rate(mean, mean - half, mean + half)


def compare(variant: VariantTotals, control: VariantTotals) -> list[Comparison]:
    out = []
    for metric, s1, n1, s2, n2 in (
        ("ctr", variant.clicks, variant.impressions, control.clicks, control.impressions),
        ("conversion", variant.conversions, variant.users, control.conversions, control.users),
    ):
        z, p = two_proportion_z(s1, n1, s2, n2)
        base = s2 / n2 if n2 else 0.0
        rate = s1 / n1 if n1 else 0.0
        lift = (rate - base) / base if base else 0.0
        out.append(
            Comparison(
                metric, variant.variant, control.variant, lift, z, p, prob_beats(s1, n1, s2, n2)
            )
        )
    return out
