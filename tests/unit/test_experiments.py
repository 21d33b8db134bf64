"""A/B assignment and statistics (pure)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from analysis import ab_stats
from personalization.experiments import (
    Experiment,
    Variant,
    assign,
    assignment_for,
    parse_experiments,
)

EXP = Experiment(
    "ranking",
    (
        Variant("control", "blend_v1", 45),
        Variant("hybrid", "hybrid_v1", 45),
        Variant("holdout", "trending", 10),
    ),
)


def test_assignment_is_deterministic_and_sticky():
    first = [assign(EXP, f"user-{i}").name for i in range(1000)]
    again = [assign(EXP, f"user-{i}").name for i in range(1000)]
    assert first == again


def test_split_follows_weights():
    counts = Counter(assign(EXP, f"user-{i}").name for i in range(20_000))
    assert abs(counts["control"] / 20_000 - 0.45) < 0.015
    assert abs(counts["holdout"] / 20_000 - 0.10) < 0.01


def test_salt_reshuffles_and_experiments_are_independent():
    salted = Experiment(EXP.name, EXP.variants, salt="v2")
    other = Experiment("other", EXP.variants)
    users = [f"user-{i}" for i in range(2000)]
    same_salted = sum(assign(EXP, u) == assign(salted, u) for u in users) / len(users)
    same_other = sum(assign(EXP, u) == assign(other, u) for u in users) / len(users)
    # Independent draws agree with probability 0.45² + 0.45² + 0.1² = 0.415.
    assert abs(same_salted - 0.415) < 0.05 and abs(same_other - 0.415) < 0.05


def test_start_stop_window():
    data = {
        "experiments": [
            {
                "name": "x",
                "start": "2026-01-01T00:00:00Z",
                "stop": "2026-02-01T00:00:00Z",
                "variants": [{"name": "a", "strategy": "s"}, {"name": "b", "strategy": "t"}],
            }
        ]
    }
    [exp] = parse_experiments(data)
    jan = 1768000000000  # 2026-01-10
    assert assignment_for([exp], "u", jan) is not None
    assert assignment_for([exp], "u", jan - 40 * 86_400_000) is None
    assert assignment_for([exp], "u", jan + 40 * 86_400_000) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"experiments": [{"name": "", "variants": []}]},
        {"experiments": [{"name": "x", "variants": [{"name": "a", "strategy": "s"}]}]},
        {
            "experiments": [
                {
                    "name": "x",
                    "variants": [{"name": "a", "strategy": "s"}, {"name": "a", "strategy": "t"}],
                }
            ]
        },
        {"nope": 1},
    ],
)
def test_invalid_definitions_are_refused(bad):
    with pytest.raises(ValueError):
        parse_experiments(bad)


def test_wilson_interval_contains_rate_and_narrows():
    small, large = ab_stats.wilson(10, 100), ab_stats.wilson(1000, 10_000)
    assert small.low < 0.1 < small.high and large.low < 0.1 < large.high
    assert (large.high - large.low) < (small.high - small.low)
    # Known value: 10/100 -> [0.0552, 0.1744]
    assert math.isclose(small.low, 0.0552, abs_tol=1e-3)
    assert math.isclose(small.high, 0.1744, abs_tol=1e-3)


def test_z_test_known_value_and_symmetry():
    z, p = ab_stats.two_proportion_z(120, 1000, 100, 1000)
    assert math.isclose(z, 1.4284, abs_tol=1e-3)
    assert math.isclose(p, 0.1532, abs_tol=1e-3)
    z2, p2 = ab_stats.two_proportion_z(100, 1000, 120, 1000)
    assert math.isclose(z2, -z) and math.isclose(p2, p)


def test_probability_to_beat_control():
    assert ab_stats.prob_beats(200, 1000, 100, 1000) > 0.99
    assert ab_stats.prob_beats(100, 1000, 200, 1000) < 0.01
    assert 0.4 < ab_stats.prob_beats(100, 1000, 100, 1000) < 0.6


def test_compare_reports_lift():
    variant = ab_stats.VariantTotals(
        "b", users=1000, impressions=5000, clicks=600, conversions=80, revenue=800.0
    )
    control = ab_stats.VariantTotals(
        "a", users=1000, impressions=5000, clicks=500, conversions=50, revenue=500.0
    )
    ctr, conv = ab_stats.compare(variant, control)
    assert math.isclose(ctr.lift, 0.2) and ctr.p_value < 0.01
    assert math.isclose(conv.lift, 0.6) and conv.prob_beats_control > 0.99
