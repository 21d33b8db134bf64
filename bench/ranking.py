"""Scenario ``ranking``: CPU of one hybrid ranking on a large catalog, in process.

    python -m bench ranking [--items 10000] [--factors 32] [--rounds 300] [--strategy hybrid_v1]

What one Recommend costs serving's request thread between reading the user's row and
answering: :func:`serving.ranking.rank` over a catalog snapshot of ``--items`` items in 40
categories, every model in it (``--factors`` CF factors per item, co-visitation lists of
50 neighbours for a third of the items, two content tags each), for a user with
interests, 20 recent and 100 purchased items and a CF vector, ten items asked for, with
exploration on (10 %). No services: the ranking is pure. Figures are the thread's CPU
time (``time.thread_time``) per call, which other processes on a shared machine do not
inflate as they do wall time, and the wall time beside it; ``--rounds`` calls, each with
its own seed.

It was a timed unit test before (``tests/unit/test_ranking.py`` keeps the ranking's
correctness on the same catalog); speed is a benchmark's to report, not a test's to
assert.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from bench.env import BenchStack, format_table, say
from bench.stats import latency_summary

__all__ = ["add_arguments", "report", "run_ranking_bench"]

CATEGORIES = 40
NEIGHBOURS = 50


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("ranking")
    g.add_argument("--items", type=int, default=10_000, help="items in the catalog")
    g.add_argument("--factors", type=int, default=32, help="CF factors per item and user")
    g.add_argument("--rounds", type=int, default=300, help="rankings timed")
    g.add_argument("--strategy", default="hybrid_v1", help="ranking.strategies entry")


def catalog_and_user(
    items: int, factors: int, seed: int, now_ms: int | None = None
) -> tuple[Any, Any]:
    """A snapshot of ``items`` items with every model, and a user who uses them all
    (trending scores as of an hour before ``now_ms``, default now)."""
    from serving.catalog import ItemRow, build_snapshot
    from serving.online_features import UserFeatures

    rng = np.random.default_rng(seed)
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    rows = [
        ItemRow(
            item_id=f"i{i}",
            category=f"c{i % CATEGORIES}",
            trending_score=float(rng.random()),
            trending_ref_ms=now_ms - 3_600_000,
        )
        for i in range(items)
    ]
    plain = build_snapshot(rows, built_ms=now_ms)
    ids = plain.item_ids
    snapshot = plain.with_models(
        item_factors={i: rng.standard_normal(factors).astype(np.float32) for i in ids},
        covisitation={
            ids[a]: (
                [ids[b] for b in rng.integers(0, items, NEIGHBOURS)],
                rng.random(NEIGHBOURS).tolist(),
            )
            for a in range(0, items, 3)
        },
        item_tags={i: [f"t{rng.integers(20)}", f"t{rng.integers(20)}"] for i in ids},
    )
    user = UserFeatures(
        user_id="bench-user",
        interests=[("c1", 3.0), ("c2", 1.0)],
        recent_items=[ids[3 * j] for j in range(20)],
        purchased_items=[ids[j] for j in range(1, 200, 2)],
        cf_vector=rng.standard_normal(factors).tolist(),
        events_total=20,
        features_age_ms=1000,
    )
    return snapshot, user


def run_ranking_bench(bench: BenchStack, args: Any) -> dict[str, Any]:
    from serving.ranking import RankingParams, rank

    params = dataclasses.replace(
        RankingParams.from_settings(bench.settings, args.strategy), exploration_share=0.1
    )
    snapshot, user = catalog_and_user(args.items, args.factors, args.seed)
    say(f"{len(snapshot):,} items, {args.factors} factors; {args.rounds} rankings")
    now_ms = int(time.time() * 1000)
    rank(user, snapshot, k=10, now_ms=now_ms, params=params, seed=-1)  # first-call caches
    cpu: list[float] = []
    wall: list[float] = []
    for seed in range(args.rounds):
        w0, c0 = time.perf_counter(), time.thread_time()
        ranking = rank(user, snapshot, k=10, now_ms=now_ms, params=params, seed=seed)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
        if len(ranking.items) != 10:
            raise RuntimeError(f"ranking returned {len(ranking.items)} items, not 10")
    return {
        "parameters": {
            "items": len(snapshot),
            "factors": args.factors,
            "rounds": args.rounds,
            "strategy": args.strategy,
            "exploration_share": 0.1,
            "covisitation_lists": len(range(0, args.items, 3)),
        },
        "cpu_ms": latency_summary(cpu),
        "wall_ms": latency_summary(wall),
    }


def report(r: dict[str, Any]) -> str:
    p = r["parameters"]
    rows = [
        (what, f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['max_ms']:.3f}")
        for what, s in (("thread CPU", r["cpu_ms"]), ("wall", r["wall_ms"]))
    ]
    title = (
        f"rank() k=10, {p['strategy']}, {p['items']:,} items x {p['factors']} factors, "
        f"{p['rounds']} calls"
    )
    return f"{title}\n{format_table(('per call', 'p50 ms', 'p99 ms', 'max ms'), rows)}"
