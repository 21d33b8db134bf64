"""Rounding of exported scores: the same decimals as ``round`` where it matters."""

from __future__ import annotations

import math
import random

import pytest

from personalization.decimals import rounded, rounded_all


def test_agrees_with_round_over_six_decades_and_both_signs():
    rng = random.Random(7)
    values = [
        (rng.random() - 0.3) * rng.choice((1e-3, 1.0, 10.0, 100.0, 1e4)) for _ in range(200_000)
    ]
    for digits in (4, 6):
        assert rounded_all(values, digits) == [round(v, digits) for v in values]
        assert [rounded(v, digits) for v in values[:1000]] == [
            round(v, digits) for v in values[:1000]
        ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, 0.0), (1.0, 1.0), (0.1234564, 0.123456), (0.1234566, 0.123457), (-2.5e-7, 0.0)],
)
def test_prints_as_the_short_decimal(value: float, expected: float):
    out = rounded(value)
    assert out == expected
    assert len(repr(out)) <= len("0.123457") + 1


def test_empty_and_generators():
    assert rounded_all([]) == []
    assert rounded_all(x / 3 for x in range(3)) == [0.0, 0.333333, 0.666667]


def test_nan_and_infinities_come_back_as_they_are():
    nan, inf = float("nan"), float("inf")
    assert math.isnan(rounded(nan)) and rounded(inf) == inf and rounded(-inf) == -inf
    out = rounded_all([0.1234567, nan, inf, -inf])
    assert out[0] == 0.123457 and math.isnan(out[1]) and out[2:] == [inf, -inf]


def test_exact_binary_ties_go_up_where_round_goes_to_even():
    assert round(0.0078125, 6) == 0.007812
    assert rounded(0.0078125) == 0.007813
