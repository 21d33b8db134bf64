"""Scenario ``catalog``: CPU of one serving catalog refresh on a busy catalog.

    python -m bench catalog [--items 5000] [--changed 1500] [--neighbours 30] [--rounds 10]

Serving's catalog refresh (``serving/catalog.py``) shares the process, and Python's GIL,
with Recommend: its CPU is what the request loop competes with (README, ``bench
stack``). On a private Redis, ``--items`` item rows are written as the online-store
writer writes them (``item_stats`` with ``--neighbours`` co-visitation neighbours,
``item_cf`` with ``learning.factors`` factors, the item index), then:

1. one full read (a new server's first refresh);
2. ``--rounds`` rounds that rewrite ``--changed`` random items (about what 1,000
   events/s change in the 2 s between two refreshes) and refresh, three ways on the
   same Redis: the models (factors, co-visitation lists) built by every refresh (what a
   direct ``refresh_once`` does), deferred as the background refresh defers them
   (``serving.catalog_models_refresh_s``), and with one new item per round (a new item
   re-sorts the catalog: a full rebuild, models included).

Figures are the refreshing thread's CPU time (``time.thread_time``) per refresh, and
its wall time; the refresh runs unpaced here (pacing adds rests, not CPU). Then, with
everything loaded before the catalog frozen as ``serving.app.serve`` freezes it, the
time of a full cyclic-GC collection while the catalog is held: a pause of every thread,
the request loop's included.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.env import BenchStack, format_table, say
from bench.stats import latency_summary
from personalization.heap import settle_heap

__all__ = ["add_arguments", "report", "run_catalog_bench"]

CATEGORIES = 40


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("catalog")
    g.add_argument("--items", type=int, default=5_000, help="items in the catalog")
    g.add_argument("--changed", type=int, default=1_500, help="items rewritten per round")
    g.add_argument("--neighbours", type=int, default=30, help="co-visitation list length")
    g.add_argument("--rounds", type=int, default=10, help="refreshes per way")


class _ItemWriter:
    """Item rows as the online-store writer leaves them in Redis (Feast's layout)."""

    def __init__(self, settings: Any, items: int, neighbours: int, seed: int) -> None:
        import redis
        from feast.infra.online_stores.redis import RedisOnlineStore

        from personalization import feature_store as fs

        self.fs = fs
        self.settings = settings
        self.items = items
        self.neighbours = min(neighbours, items - 1)
        self.factors = settings.learning.factors
        self.rng = random.Random(seed)
        self.store = RedisOnlineStore()
        self.config = fs.repo_config(settings)
        self.client = redis.Redis(host=settings.redis.host, port=settings.redis.port)

    def write(self, item_ids: list[str], at_ms: int) -> None:
        fs, rng = self.fs, self.rng
        ts = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        stats, cf = [], []
        for item_id in item_ids:
            neighbours = rng.sample(range(self.items), self.neighbours)
            row = {
                "category": f"c{sum(map(ord, item_id)) % CATEGORIES}",
                "price": 10.0,
                "trending_score": rng.random() * 50,
                "trending_ref_ms": at_ms,
                "last_event_ms": at_ms,
                "views_1h": 1,
                "views_24h": 2,
                "covisit_items": [f"i{j}" for j in neighbours],
                "covisit_scores": sorted((rng.random() for _ in neighbours), reverse=True),
            }
            vector = [rng.gauss(0.0, 0.1) for _ in range(self.factors)]
            stats.append((fs.entity_key("item_stats", item_id), fs.encode_row("item_stats", row)))
            cf.append(
                (fs.entity_key("item_cf", item_id), fs.encode_row("item_cf", {"cf_vector": vector}))
            )
        for view, rows in (("item_stats", stats), ("item_cf", cf)):
            self.store.online_write_batch(
                self.config,
                fs.feature_view(view),
                [(key, values, ts, None) for key, values in rows],
                None,
            )
        index = fs.item_index_key(self.settings.feast.project)
        self.client.zadd(index, dict.fromkeys(item_ids, at_ms))


def _timed(refresh: Any) -> tuple[float, float, int]:
    """CPU seconds and wall seconds of one refresh, and the rows it read."""
    cpu, wall = time.thread_time(), time.perf_counter()
    rows = refresh()
    return time.thread_time() - cpu, time.perf_counter() - wall, rows


def _summary(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    return {
        "refreshes": len(samples),
        "rows_per_refresh": round(statistics.mean(s[2] for s in samples)),
        "cpu": latency_summary([s[0] for s in samples]),
        "wall": latency_summary([s[1] for s in samples]),
    }


def run_catalog_bench(bench: BenchStack, args: Any) -> dict[str, Any]:
    from serving.catalog import ItemCatalog

    bench.start_redis()
    settings = bench.settings
    writer = _ItemWriter(settings, args.items, args.neighbours, args.seed)
    ids = [f"i{n}" for n in range(args.items)]
    at_ms = int(time.time() * 1000) - 30_000
    writer.write(ids, at_ms)
    say(f"{args.items:,} items written ({args.neighbours} neighbours, {writer.factors} factors)")

    settle_heap(young_collection_every=None)  # as the server does once started
    catalog = ItemCatalog(settings)
    ways: dict[str, list[tuple[float, float, int]]] = {}
    first = _timed(catalog.refresh_once)
    ways["full read (first refresh)"] = [first]
    say(f"full read: {first[0] * 1000:.1f} ms CPU, {len(catalog.snapshot):,} items")
    new_items = 0
    plan = (
        ("in place, models every refresh", lambda: catalog.refresh_once(), False),
        (
            "in place, models deferred (background default)",
            lambda: catalog.refresh_once(defer_models=True),
            False,
        ),
        ("one new item per round (full rebuild)", lambda: catalog.refresh_once(), True),
    )
    for name, refresh, add_item in plan:
        samples = []
        for _ in range(args.rounds):
            at_ms += 2_000
            batch = writer.rng.sample(ids, min(args.changed, len(ids)))
            if add_item:
                batch.append(f"new-{new_items}")
                new_items += 1
            writer.write(batch, at_ms)
            samples.append(_timed(refresh))
        ways[name] = samples
        summary = _summary(samples)
        cpu = summary["cpu"]
        say(f"{name}: {cpu['p50_ms']} ms CPU p50, {cpu['max_ms']} max")
    gc.collect()
    gc.collect()
    pauses = []
    for _ in range(5):
        t = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t)
    tracked = len(gc.get_objects())
    pause = latency_summary(pauses)
    say(f"full GC collection with the catalog held: {pause['p50_ms']} ms")
    catalog.stop()
    gc.unfreeze()
    return {
        "parameters": {
            "items": args.items,
            "changed_per_round": args.changed,
            "neighbours": args.neighbours,
            "factors": writer.factors,
            "rounds": args.rounds,
            "models_refresh_s": settings.serving.catalog_models_refresh_s,
        },
        "ways": {name: _summary(samples) for name, samples in ways.items()},
        "gc": {
            "full_collection": pause,
            "tracked_objects": tracked,
        },
    }


def report(r: dict[str, Any]) -> str:
    p = r["parameters"]
    rows = [
        (
            name,
            w["refreshes"],
            f"{w['rows_per_refresh']:,}",
            w["cpu"]["p50_ms"],
            w["cpu"]["mean_ms"],
            w["cpu"]["max_ms"],
            w["wall"]["p50_ms"],
        )
        for name, w in r["ways"].items()
    ]
    title = (
        f"catalog refresh, {p['items']:,} items ({p['neighbours']} neighbours, "
        f"{p['factors']} factors), {p['changed_per_round']:,} rewritten per round"
    )
    header = [title, "n", "rows", "CPU ms p50", "mean", "max", "wall ms p50"]
    g = r["gc"]
    return (
        f"{format_table(header, rows)}\n\nfull GC collection with the catalog held: "
        f"{g['full_collection']['p50_ms']} ms p50, {g['full_collection']['max_ms']} max "
        f"({g['tracked_objects']:,} objects tracked besides the frozen ones)"
    )
