"""Quantiles from a Prometheus histogram's buckets (bench stack's server-side figures)."""

from __future__ import annotations

import math

from bench.stats import histogram_summary
from bench.whole_stack import server_side


def test_a_quantile_is_the_upper_bound_of_the_bucket_it_falls_in() -> None:
    # 100 requests: 60 <= 1 ms, 35 more <= 5 ms, 4 more <= 25 ms, one slower.
    buckets = {0.001: 60.0, 0.005: 95.0, 0.025: 99.0, math.inf: 100.0}
    assert histogram_summary(buckets) == {
        "count": 100,
        "p50_ms": 1.0,
        "p90_ms": 5.0,
        "p99_ms": 25.0,
    }


def test_a_quantile_beyond_the_last_bound_is_unknown() -> None:
    summary = histogram_summary({0.001: 90.0, math.inf: 100.0})
    assert summary["p90_ms"] == 1.0 and summary["p99_ms"] is None


def test_a_phase_is_the_difference_of_two_scrapes() -> None:
    before = {0.001: 1000.0, 0.01: 1000.0, math.inf: 1000.0}
    after = {0.001: 1050.0, 0.01: 1099.0, math.inf: 1100.0}
    # 100 requests in the phase: 50 within 1 ms, 49 more within 10 ms, one slower.
    assert server_side(before, after) == {
        "count": 100,
        "p50_ms": 1.0,
        "p90_ms": 10.0,
        "p99_ms": 10.0,
    }
    assert histogram_summary({}) == {"count": 0}
    assert server_side(before, before) == {"count": 0}


def test_scrape_keys_split_into_name_and_labels() -> None:
    from bench.env import metric_sum, sample_labels

    assert sample_labels("pz_up") == ("pz_up", {})
    key = "pz_serving_rpc_duration_seconds_bucket{le=+Inf,method=Recommend,service=x}"
    assert sample_labels(key) == (
        "pz_serving_rpc_duration_seconds_bucket",
        {"le": "+Inf", "method": "Recommend", "service": "x"},
    )
    metrics = {
        "pz_fallbacks_total{reason=store_unavailable}": 2.0,
        "pz_fallbacks_total{reason=cold_start}": 3.0,
        "pz_fallbacks_total_created{reason=cold_start}": 1e9,
        "pz_fallbacks_total{reason=nan}": math.nan,
    }
    assert metric_sum(metrics, "pz_fallbacks_total") == 5.0
    assert metric_sum(metrics, "pz_fallbacks_total", reason="cold_start") == 3.0
    assert metric_sum(metrics, "pz_fallbacks_total", reason="cold") == 0.0
