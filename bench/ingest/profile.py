"""The job's own per-record code (flink_jobs/local.py) in process, timed per stage."""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from typing import Any

from flink_jobs import local
from personalization.settings import PROJECT_ROOT, Settings

# --- the in-process profile -------------------------------------------------------------

# The job's own per-record code (flink_jobs/steps.py), run by flink_jobs/local.py with
# keyed state and records pickled as Flink's PICKLED_BYTE_ARRAY state and exchanges do.
STAGE_NAMES = {
    local.STAGE_PARSE: "parse: parse_event + pseudonym (ParseStep)",
    local.STAGE_RECORDS: "records between operators: pickle round trips",
    local.STAGE_USER_STATE: "user ValueState: unpickle + pickle UserState",
    local.STAGE_USER: "user step: dedup, profile, triggers, co-visitation, CF user half, rows",
    local.STAGE_ITEM_STATE: "item ValueStates: item + neighbours (unpickle + pickle)",
    local.STAGE_ITEM: "item step: popularity, trending, neighbours, CF item half, rows",
    local.STAGE_FEED: "item-factor feed: decode + KnownItems.put (user side)",
    local.STAGE_JSON: "FeatureUpdate.to_json (all rows), trigger records",
}
GROUPS = {
    "user features (parse, state, step)": (
        local.STAGE_PARSE,
        local.STAGE_USER_STATE,
        local.STAGE_USER,
    ),
    "item features (state, step)": (local.STAGE_ITEM_STATE, local.STAGE_ITEM),
    "item-factor feed (CF loop back to the user side)": (local.STAGE_FEED,),
    "serialization (records, rows as JSON)": (local.STAGE_RECORDS, local.STAGE_JSON),
}


class Laps:
    """Stage timer: ``lap(stage)`` charges the time since the previous lap to ``stage``."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.ns: dict[str, int] = defaultdict(int)
        self.count: dict[str, int] = defaultdict(int)
        self.last = clock()

    def restart(self) -> None:
        self.last = self.clock()

    def lap(self, stage: str) -> None:
        now = self.clock()
        self.ns[stage] += now - self.last
        self.count[stage] += 1
        self.last = now


def lap_overhead_ns(clock: Any) -> float:
    """What one ``lap`` costs by itself (a clock read and the bookkeeping)."""
    laps = Laps(clock)
    for _ in range(20_000):
        laps.lap("x")
    return laps.ns["x"] / laps.count["x"]


def run_operators(raws: list[str], settings: Settings, laps: Laps) -> int:
    """The job's per-record code on ``raws``, timed per stage; events accepted."""
    pipeline = local.LocalPipeline(settings, pickled=True, keep_rows=False, lap=laps.lap)
    laps.restart()
    return pipeline.run(raws).accepted


def profile_stages(
    events: list[dict[str, Any]], settings: Settings, cprofile_top: int = 0
) -> dict[str, Any]:
    """µs of thread CPU per event for each stage of the operators' Python code."""
    raws = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
    clock = time.thread_time_ns
    overhead = lap_overhead_ns(clock)
    laps = Laps(clock)
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    accepted = run_operators(raws, settings, laps)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    n = max(1, len(raws))
    per_stage = {
        STAGE_NAMES[stage]: round(
            max(0.0, laps.ns[stage] - overhead * laps.count[stage]) / n / 1000.0, 1
        )
        for stage in local.STAGES
    }
    total = round(sum(per_stage.values()), 1)
    result: dict[str, Any] = {
        "events": len(raws),
        "accepted": accepted,
        "us_per_event": per_stage,
        "groups_us_per_event": {
            group: round(sum(per_stage[STAGE_NAMES[s]] for s in stages), 1)
            for group, stages in GROUPS.items()
        },
        "total_us_per_event": total,
        "implied_max_events_per_s_one_interpreter": round(1e6 / total) if total else None,
        "clock": "time.thread_time_ns (CPU of this thread), cost of the timing subtracted",
        "lap_overhead_ns": round(overhead),
        "laps_per_event": round(sum(laps.count.values()) / n, 1),
        "wall_s": round(wall, 1),
        "process_cpu_s": round(cpu, 1),
    }
    if cprofile_top > 0:
        profiler = cProfile.Profile()
        profiler.enable()
        run_operators(raws, settings, Laps(time.perf_counter_ns))
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO())
        result["cprofile_top_by_tottime"] = _cprofile_rows(stats, cprofile_top, n)
    return result


def _cprofile_rows(stats: pstats.Stats, top: int, n: int) -> list[dict[str, Any]]:
    entries = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        entries.append(
            {
                "function": f"{_short(filename)}:{line}({func})",
                "calls_per_event": round(calls / n, 2),
                "tottime_us_per_event": round(tottime / n * 1e6, 1),
                "cumtime_us_per_event": round(cumtime / n * 1e6, 1),
            }
        )
    entries.sort(key=lambda e: -float(e["tottime_us_per_event"]))
    return entries[:top]


def _short(filename: str) -> str:
    stdlib = f"python{sys.version_info.major}.{sys.version_info.minor}{os.sep}"
    for marker in (f"site-packages{os.sep}", stdlib, f"{PROJECT_ROOT}{os.sep}"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
