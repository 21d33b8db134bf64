"""bench ranking: its figures come from real rankings, and its report prints them."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from bench.env import BenchStack, private_settings
from bench.ranking import report, run_ranking_bench


def test_ranking_bench_times_every_call_and_reports_p99(tmp_path: Path) -> None:
    bench = BenchStack(private_settings(tmp_path))
    args = Namespace(items=600, factors=8, rounds=7, strategy="hybrid_v1", seed=1)
    result = run_ranking_bench(bench, args)
    assert result["parameters"]["items"] == 600
    assert result["cpu_ms"]["count"] == 7 and result["wall_ms"]["count"] == 7
    assert 0 < result["cpu_ms"]["p50_ms"] <= result["cpu_ms"]["max_ms"]
    text = report(result)
    assert "600 items x 8 factors" in text and "thread CPU" in text and "p99 ms" in text


def test_the_bench_command_line_takes_the_ranking_scenario() -> None:
    from bench.__main__ import build_parser

    args = build_parser().parse_args(["ranking", "--items", "2000", "--rounds", "50"])
    assert (args.scenario, args.items, args.rounds, args.factors) == ("ranking", 2000, 50, 32)
    assert isinstance(args.seed, int)  # the general options' seed
