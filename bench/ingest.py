"""Scenario ``ingest``: sustained events/s through the whole job, and CF updates/s in it.

    python -m bench ingest [--events 50000] [--dataset movielens|taobao|PATH]

On a private stack (:class:`bench.env.BenchStack`: Redis, Kafka, ``feast apply``, the
Flink job on a MiniCluster in thread mode, the online-store writer):

1. a backlog of ``--events`` real events (the MovieLens 100K ratings or the Taobao
   UserBehavior sample, read by :func:`traffic.iter_events` in time
   order) is produced to the Kafka event topics *before* the job starts. Event times
   are shifted by one constant so the last event lies just before the preload (gaps
   between events are the dataset's own), so no window, dedup horizon or age limit
   treats them as stale;
2. the job and the writer start and drain the backlog. Every ``--sample-interval``
   seconds the driver scrapes the job's Prometheus endpoint (``pz_job_events_total`` +
   ``pz_job_dead_letters_total`` = events consumed by the job;
   ``pz_model_updates_total{model="cf"}`` = interactions learned by the online MF) and
   the writer's, and reads the Kafka offsets of ``feature_updates`` (rows the job
   emitted, rows the writer applied and committed);
3. figures: the time to the first event (JVM, Python and Flink start), the sustained
   rate over the steady window (from ``--warmup-fraction`` to ``1 - --tail-fraction``
   of the backlog, so start-up and the last stragglers are excluded), the overall rate
   (first to last event), CF updates/s over the same window, and the drain: the time
   until the writer has applied and committed the last feature row (Kafka in ->
   features in Redis). CPU per process (and per thread of the job's JVM, where the
   Python operators run) over the steady window and the whole run;
4. check: every user's ``events_total`` / ``last_seen_ms`` read back from Redis the way
   serving reads it must match the backlog.

Before the stack starts, the same event stream runs through the operators' pure code
in this process (:func:`profile_stages`): the per-record work of ``ParseEvents``,
``UserFeatures``, ``ItemFeatures`` and ``CollaborativeFiltering`` with their keyed
state kept as pickled bytes in dicts (PyFlink's ``PICKLED_BYTE_ARRAY`` state pickles on
every ``update`` and unpickles on every ``value``), timed per stage in thread CPU time
(so other tenants of the machine do not inflate it). Its sum is what one interpreter
must spend per event before Flink's own per-record cost (the JVM <-> Python calls of
every operator, record serialization in the JVM, timers, checkpoints).
"""

from __future__ import annotations

import cProfile
import gc
import io
import itertools
import json
import math
import os
import pstats
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import (
    BenchStack,
    CpuMeter,
    format_table,
    metric_sum,
    proc_stat_entries,
    say,
    scrape,
)
from flink_jobs import local
from ops import stack
from personalization.settings import PROJECT_ROOT, Settings

DATASETS = {
    "movielens": "movielens-100k/u.data",
    "taobao": "taobao-userbehavior-sample/UserBehavior_sample.csv.gz",
}


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("ingest")
    g.add_argument("--events", type=int, default=50_000, help="backlog size (events)")
    g.add_argument(
        "--dataset",
        default="movielens",
        help="movielens (MovieLens 100K ratings), taobao (UserBehavior sample) or a path",
    )
    g.add_argument("--sample-interval", type=float, default=1.0, help="metrics scrape period")
    g.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="steady window starts when the job has consumed this share of the backlog",
    )
    g.add_argument(
        "--tail-fraction", type=float, default=0.1, help="... and ends this share before the end"
    )
    g.add_argument("--settle", type=float, default=4.0, help="quiet seconds that end the drain")
    g.add_argument("--timeout", type=float, default=1200.0, help="give up after (s)")
    g.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    g.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the trivial keyed job (bench/trivial_job.py) on the same backlog",
    )
    g.add_argument(
        "--profile-only", action="store_true", help="only the in-process profile (no stack)"
    )
    g.add_argument(
        "--profile-events", type=int, default=0, help="events profiled (0 = the whole backlog)"
    )
    g.add_argument(
        "--cprofile-top",
        type=int,
        default=0,
        metavar="N",
        help="also run the profile under cProfile and list the N costliest functions",
    )


# --- the backlog -----------------------------------------------------------------------


def load_backlog(
    dataset: str, n: int, settings: Settings, end_ms: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first ``n`` events of ``dataset`` in time order, shifted to end at ``end_ms``."""
    from personalization.events import EventRejected, parse_event_time_ms
    from traffic import iter_events

    path = Path(settings.datasets_dir) / DATASETS[dataset] if dataset in DATASETS else Path(dataset)
    events = list(iter_events(path, limit=n, sort_by_time=True))
    if not events:
        raise ValueError(f"{path}: no events")
    times: list[int] = []
    for event in events:
        try:
            times.append(parse_event_time_ms(event.get("event_time")))
        except EventRejected:
            times.append(-1)
    last = max(times)
    shift = end_ms - last
    for event, t in zip(events, times, strict=True):
        if t > 0:
            event["event_time"] = t + shift
    valid = [t for t in times if t > 0]
    info = {
        "path": str(path),
        "events": len(events),
        "users": len({e.get("user_id") for e in events}),
        "items": len({e.get("item_id") for e in events if e.get("item_id")}),
        "event_types": dict(Counter(str(e.get("event_type")) for e in events)),
        "source_span_days": round((last - min(valid)) / 86_400_000, 1) if valid else 0,
        "time_shift_days": round(shift / 86_400_000, 1),
    }
    return events, info


def preload(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Produce the backlog to the event topics (as fast as the producer goes)."""
    from traffic import TrafficSender

    sender = TrafficSender(
        settings,
        rate=0.0,
        producer_config={"linger.ms": 20, "batch.num.messages": 10_000},
        flush_timeout_s=120.0,
    )
    stats = sender.send(events)
    del sender  # the producer: no idle client left when the broker stops
    gc.collect()
    if stats.errors or stats.undelivered or stats.delivered != len(events):
        raise RuntimeError(
            f"preload incomplete: {stats.delivered}/{len(events)} delivered, "
            f"{stats.errors} errors ({stats.first_error}), {stats.undelivered} undelivered"
        )
    return {
        "sent": stats.sent,
        "elapsed_s": round(stats.elapsed_s, 2),
        "rate_ev_s": round(stats.rate),
        "per_topic": dict(stats.per_topic),
    }


# --- sampling --------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the job was launched
    job_up: bool
    consumed: int  # accepted + dead-lettered, counted by ParseEvents
    dead_letters: int
    duplicates: int
    cf_updates: int
    writer_rows: int
    rows_emitted: int  # feature_updates high watermarks
    rows_committed: int  # the writer's committed offsets
    flink_committed: int  # the job's offsets, committed on checkpoint


class Offsets:
    """High watermarks and committed offsets of the job's and the writer's groups."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer, TopicPartition

        k = settings.kafka

        def consumer(group: str) -> Any:
            # Never subscribes: reads the group's commits only.
            return Consumer(
                {
                    "bootstrap.servers": k.bootstrap_servers,
                    "group.id": group,
                    "enable.auto.commit": False,
                }
            )

        self.writer = consumer(k.writer_consumer_group)
        self.flink = consumer(k.flink_consumer_group)
        meta = self.writer.list_topics(timeout=10)

        def partitions(topic: str) -> list[Any]:
            return [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]

        self.updates = partitions(k.feature_updates_topic)
        self.events = [tp for t in k.event_topics for tp in partitions(t)]

    @staticmethod
    def _totals(consumer: Any, tps: list[Any]) -> tuple[int, int]:
        high = committed = 0
        for tp in consumer.committed(tps, timeout=5):
            high += consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            committed += max(tp.offset, 0)
        return high, committed

    def sample(self) -> tuple[int, int, int, int]:
        """(rows emitted, rows committed by the writer, events in Kafka, events committed
        by the job)."""
        emitted, applied = self._totals(self.writer, self.updates)
        events, consumed = self._totals(self.flink, self.events)
        return emitted, applied, events, consumed

    def close(self) -> None:
        self.writer.close()
        self.flink.close()


def _thread_ticks(sid: int) -> dict[int, tuple[str, int]]:
    """tid -> (thread name, utime + stime ticks) for every thread of session ``sid``."""
    return {
        tid: (name, int(fields[11]) + int(fields[12]))
        for pid, _, process in proc_stat_entries()
        if int(process[3]) == sid
        for tid, name, fields in proc_stat_entries(f"/proc/{pid}/task")
    }


def thread_cpu(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float
) -> list[dict[str, Any]]:
    """% of a core per thread over the interval, busiest first (threads > 1 %)."""
    tck = os.sysconf("SC_CLK_TCK")
    rows = []
    for tid, (name, ticks) in after.items():
        pct = 100.0 * (ticks - before.get(tid, (name, 0))[1]) / tck / max(seconds, 1e-6)
        if pct >= 1.0:
            rows.append({"thread": name, "tid": tid, "cpu_pct": round(pct, 1)})
    return sorted(rows, key=lambda r: -float(r["cpu_pct"]))


# Task threads of the job that run Python operators (names cut to 15 characters by
# Linux): the chained source + parse, the user, item and CF operators, the key-by
# operators, attribution and propensity. Compiler, GC and Kafka client threads aside.
OPERATOR_THREADS = (
    "Source: kafka",
    "user features",
    "item popularit",
    "collaborative",
    "_stream_key_by",
    "A/B attributio",
    "propensity",
)


def operator_threads_pct(threads: list[dict[str, Any]]) -> float:
    return round(
        sum(t["cpu_pct"] for t in threads if str(t["thread"]).startswith(OPERATOR_THREADS)), 1
    )


class Window:
    """CPU of the stack's processes (and the job's threads) between two samples."""

    def __init__(self, sessions: dict[str, int], job_sid: int) -> None:
        self.meter = CpuMeter(sessions).start()
        self.job_sid = job_sid
        self.threads = _thread_ticks(job_sid) if job_sid else {}
        self.started = time.monotonic()

    def close(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        after = _thread_ticks(self.job_sid) if self.job_sid else {}
        return {
            "cpu_pct": self.meter.stop(),
            "job_threads": thread_cpu(self.threads, after, elapsed),
        }


def sample_loop(
    bench: BenchStack, n: int, args: Any, launched: float, sessions: dict[str, int]
) -> tuple[list[Sample], dict[str, Any], list[str]]:
    """Sample until the backlog is consumed and the writer has applied every row."""
    settings = bench.settings
    urls = stack.metrics_urls(settings)
    offsets = Offsets(settings)
    samples: list[Sample] = []
    notes: list[str] = []
    windows: dict[str, Any] = {}
    whole: Window | None = None
    steady: Window | None = None
    lo = math.ceil(n * args.warmup_fraction)
    hi = math.floor(n * (1.0 - args.tail_fraction))
    quiet_since: float | None = None
    last: Sample | None = None
    next_at = time.monotonic()
    try:
        while True:
            next_at += args.sample_interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic() - launched
            if now > args.timeout:
                notes.append(f"timed out after {args.timeout:.0f}s")
                break
            if bench.component_pid(stack.FLINK_JOB) is None:
                raise RuntimeError("the Flink job exited\n" + bench.log_tail(stack.FLINK_JOB))
            try:
                job = scrape(urls[stack.FLINK_JOB.name])
                up = True
            except OSError:
                job, up = {}, False  # endpoint not up yet (operators not opened)
            try:
                writer = scrape(urls[stack.WRITER.name])
            except OSError:
                writer = {}
            try:
                emitted, applied, _, flink_committed = offsets.sample()
            except Exception as exc:  # a broker call timed out: keep the previous offsets
                notes.append(f"offsets at {now:.0f}s: {exc!r}")
                if last is None:
                    continue
                emitted, applied = last.rows_emitted, last.rows_committed
                flink_committed = last.flink_committed
            dead = int(metric_sum(job, "pz_job_dead_letters_total"))
            s = Sample(
                t=round(now, 3),
                job_up=up,
                consumed=int(metric_sum(job, "pz_job_events_total")) + dead,
                dead_letters=dead,
                duplicates=int(metric_sum(job, "pz_job_duplicates_dropped_total")),
                cf_updates=int(metric_sum(job, "pz_model_updates_total", model="cf")),
                writer_rows=int(metric_sum(writer, "pz_writer_rows_written_total")),
                rows_emitted=emitted,
                rows_committed=applied,
                flink_committed=flink_committed,
            )
            samples.append(s)
            if whole is None and s.consumed > 0:
                whole = Window(sessions, sessions.get("flink-job (+JVM)", 0))
            if steady is None and s.consumed >= lo:
                steady = Window(sessions, sessions.get("flink-job (+JVM)", 0))
                windows["steady_from_t"] = s.t
            if steady is not None and "steady" not in windows and s.consumed >= hi:
                windows["steady"] = steady.close()
                windows["steady_to_t"] = s.t
            if len(samples) % 10 == 0 or (s.consumed >= n and last and last.consumed < n):
                say(
                    f"t={s.t:5.0f}s consumed {s.consumed:,}/{n:,}  cf {s.cf_updates:,}  "
                    f"rows emitted {s.rows_emitted:,} applied {s.rows_committed:,}"
                )
            changed = last is None or (
                s.consumed,
                s.cf_updates,
                s.rows_emitted,
                s.rows_committed,
            ) != (last.consumed, last.cf_updates, last.rows_emitted, last.rows_committed)
            last = s
            drained = s.consumed >= n and s.rows_committed >= s.rows_emitted > 0
            if drained and not changed:
                quiet_since = quiet_since if quiet_since is not None else s.t
                if s.t - quiet_since >= args.settle:
                    break
            else:
                quiet_since = None
    finally:
        offsets.close()
    if whole is not None:
        windows["whole"] = whole.close()
    return samples, windows, notes


# --- figures ---------------------------------------------------------------------------


def _first(samples: list[Sample], pred: Any) -> Sample | None:
    return next((s for s in samples if pred(s)), None)


def _rate(a: Sample | None, b: Sample | None, attr: str) -> float | None:
    if a is None or b is None or b.t <= a.t:
        return None
    return round((getattr(b, attr) - getattr(a, attr)) / (b.t - a.t), 1)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9), "max": round(ordered[-1], 1)}


def figures(samples: list[Sample], n: int, windows: dict[str, Any]) -> dict[str, Any]:
    final = samples[-1]
    up = _first(samples, lambda s: s.job_up)
    first = _first(samples, lambda s: s.consumed > 0)
    done = _first(samples, lambda s: s.consumed >= n)
    cf_done = _first(samples, lambda s: s.cf_updates >= final.cf_updates > 0)
    drained = _first(
        samples, lambda s: s.consumed >= n and s.rows_committed >= final.rows_emitted > 0
    )
    a = _first(samples, lambda s: s.t >= windows.get("steady_from_t", math.inf))
    b = _first(samples, lambda s: s.t >= windows.get("steady_to_t", math.inf))
    per_interval: list[float] = []
    if a is not None and b is not None:
        inside = [s for s in samples if a.t <= s.t <= b.t]
        per_interval = [
            (y.consumed - x.consumed) / (y.t - x.t) for x, y in itertools.pairwise(inside)
        ]

    def at(s: Sample | None) -> float | None:
        return None if s is None else s.t

    out: dict[str, Any] = {
        "metrics_endpoint_up_s": at(up),
        "first_event_s": at(first),
        "last_event_consumed_s": at(done),
        "cf_last_update_s": at(cf_done),
        "drained_s": at(drained),
        "consumed": final.consumed,
        "dead_letters": final.dead_letters,
        "duplicates_dropped": final.duplicates,
        "cf_updates": final.cf_updates,
        "feature_rows_emitted": final.rows_emitted,
        "feature_rows_committed_by_writer": final.rows_committed,
        "writer_rows_written": final.writer_rows,
        "steady_window_s": [at(a), at(b)],
        "steady_events_per_s": _rate(a, b, "consumed"),
        "steady_events_per_s_per_interval": _percentiles(per_interval),
        "steady_cf_updates_per_s": _rate(a, b, "cf_updates"),
        "steady_rows_emitted_per_s": _rate(a, b, "rows_emitted"),
        "steady_rows_applied_per_s": _rate(a, b, "rows_committed"),
    }
    if first is not None and done is not None and done.t > first.t:
        out["overall_events_per_s"] = round(n / (done.t - first.t), 1)
    if first is not None and drained is not None and drained.t > first.t:
        out["end_to_end_events_per_s"] = round(n / (drained.t - first.t), 1)
        out["drain_after_first_event_s"] = round(drained.t - first.t, 1)
    if done is not None and drained is not None:
        out["writer_tail_after_last_event_s"] = round(drained.t - done.t, 1)
    if first is not None and cf_done is not None and cf_done.t > first.t:
        out["overall_cf_updates_per_s"] = round(final.cf_updates / (cf_done.t - first.t), 1)
    return out


def verify_store(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every user's ``events_total`` and ``last_seen_ms`` as serving reads them."""
    from serving.online_features import StoreUnavailable, UserFeatureReader

    expected_count: Counter[str] = Counter()
    expected_last: dict[str, int] = {}
    for e in events:
        user = str(e["user_id"])
        expected_count[user] += 1
        expected_last[user] = max(expected_last.get(user, 0), int(e["event_time"]))
    from personalization.privacy import pseudonymizer

    # The job stores pseudonyms when a secret is set (identity otherwise).
    pseudonym = pseudonymizer(settings.privacy.hmac_secret)
    reader = UserFeatureReader(settings)
    rows = matched = events_total = cf_vectors = 0
    try:
        for user in expected_count:
            features = None
            for attempt in range(5):
                try:
                    features = reader.read(pseudonym(user))
                    break
                except StoreUnavailable:
                    time.sleep(0.05 * (attempt + 1))
            if features is None:
                continue
            rows += 1
            events_total += features.events_total
            cf_vectors += bool(getattr(features, "cf_vector", None))
            if (
                features.events_total == expected_count[user]
                and features.last_seen_ms == expected_last[user]
            ):
                matched += 1
    finally:
        reader.close()
    return {
        "users_expected": len(expected_count),
        "users_with_row": rows,
        "users_exact": matched,
        "users_with_cf_vector": cf_vectors,
        "events_total_in_store": events_total,
        "events_expected": len(events),
        "ok": matched == len(expected_count) and events_total == len(events),
    }


# --- the in-process profile -------------------------------------------------------------

# The job's own per-record code (flink_jobs/steps.py), run by flink_jobs/local.py with
# keyed state and records pickled as Flink's PICKLED_BYTE_ARRAY state and exchanges do.
STAGE_NAMES = {
    local.STAGE_PARSE: "parse: parse_event + pseudonym (ParseStep)",
    local.STAGE_RECORDS: "records between operators: pickle round trips",
    local.STAGE_USER_STATE: "user ValueState: unpickle + pickle UserState",
    local.STAGE_USER: "user step: dedup, profile, triggers, co-visitation history, row",
    local.STAGE_ITEM_STATE: "item ValueStates: item + neighbours (unpickle + pickle)",
    local.STAGE_ITEM: "item step: popularity, trending, neighbours, row",
    local.STAGE_CF: "cf step: prequential evaluate + OnlineMF.learn_one",
    local.STAGE_CF_STATE: "cf: factors <-> MapState (import, export + pickle per dirty key)",
    local.STAGE_JSON: "FeatureUpdate.to_json (all rows), trigger records",
}
GROUPS = {
    "user features (parse, state, step)": (
        local.STAGE_PARSE,
        local.STAGE_USER_STATE,
        local.STAGE_USER,
    ),
    "item features (state, step)": (local.STAGE_ITEM_STATE, local.STAGE_ITEM),
    "collaborative filtering (step, state)": (local.STAGE_CF, local.STAGE_CF_STATE),
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
    cf_us = per_stage[STAGE_NAMES[local.STAGE_CF]] + per_stage[STAGE_NAMES[local.STAGE_CF_STATE]]
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
        "cf_updates_per_s_alone": round(1e6 / cf_us) if cf_us else None,
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


# --- scenario --------------------------------------------------------------------------


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_ingest(bench: BenchStack, args: Any) -> dict[str, Any]:
    settings = bench.settings
    n = args.events
    events, dataset = load_backlog(args.dataset, n, settings, int(time.time() * 1000) - 1000)
    n = len(events)
    say(
        f"backlog: {n:,} events of {dataset['users']:,} users / {dataset['items']:,} items "
        f"({dataset['path']}, {dataset['source_span_days']} days, shifted by "
        f"{dataset['time_shift_days']} days)"
    )
    result: dict[str, Any] = {
        "parameters": {
            "events": n,
            "dataset": args.dataset,
            "sample_interval_s": args.sample_interval,
            "warmup_fraction": args.warmup_fraction,
            "tail_fraction": args.tail_fraction,
            "flink": settings.flink.model_dump(),
            "kafka_partitions": settings.kafka.partitions,
            "learning": settings.learning.model_dump(),
        },
        "dataset": dataset,
        "loadavg": {"at_start": _loadavg()},
    }
    if not args.no_profile:
        m = args.profile_events or n
        say(f"in-process profile of the operators' Python code on {min(m, n):,} events")
        result["profile"] = profile_stages(events[:m], settings, args.cprofile_top)
        result["loadavg"]["after_profile"] = _loadavg()
        say(
            f"profile: {result['profile']['total_us_per_event']} µs/event "
            f"(one interpreter: ≤ {result['profile']['implied_max_events_per_s_one_interpreter']:,}"
            " events/s before Flink's own per-record cost)"
        )
    if args.profile_only:
        return result

    bench.start_redis()
    bench.start_kafka()
    bench.feast_apply()
    say(f"preloading {n:,} events into Kafka (before the job starts)")
    result["preload"] = preload(settings, events)
    say(f"preloaded in {result['preload']['elapsed_s']}s: {result['preload']['per_topic']}")
    result["loadavg"]["at_job_start"] = _loadavg()
    launched = time.monotonic()
    job_pid = bench.start_component(stack.FLINK_JOB)
    writer_pid = bench.start_component(stack.WRITER)
    sessions = {
        "flink-job (+JVM)": job_pid,
        "online-store-writer": writer_pid,
        "kafka": bench.service_pid("kafka") or 0,
        "redis": bench.service_pid("redis") or 0,
    }
    samples, windows, notes = sample_loop(bench, n, args, launched, sessions)
    result["loadavg"]["at_end"] = _loadavg()
    result["figures"] = figures(samples, n, windows)
    result["cpu"] = {k: v for k, v in windows.items() if isinstance(v, dict)}
    steady = result["cpu"].get("steady")
    rate = result["figures"].get("steady_events_per_s")
    if steady and rate:
        pct = operator_threads_pct(steady["job_threads"])
        steady["operator_threads_pct"] = pct
        # CPU the job's Python operator threads spent per event, to hold against the
        # in-process profile (the difference is Flink's per-record cost around them).
        result["figures"]["operator_thread_cpu_us_per_event"] = round(pct / 100 * 1e6 / rate)
    result["notes"] = notes
    result["store_check"] = verify_store(settings, events)
    if not args.no_baseline:
        bench.stop_component(stack.WRITER)
        bench.stop_component(stack.FLINK_JOB)
        result["baseline"] = run_baseline(settings, n, args)
        base_rate = result["baseline"].get("steady_events_per_s")
        if base_rate and result["figures"].get("steady_events_per_s"):
            result["figures"]["ratio_to_trivial_job"] = round(
                result["figures"]["steady_events_per_s"] / base_rate, 3
            )
    result["samples"] = [asdict(s) for s in samples]
    f = result["figures"]
    say(
        f"steady {f['steady_events_per_s']} events/s, cf {f['steady_cf_updates_per_s']} "
        f"updates/s; drained {f.get('drain_after_first_event_s')}s after the first event; "
        f"store check: {result['store_check']}"
    )
    return result


# --- the baseline: the trivial keyed job on the same backlog ---------------------------


TRIVIAL_JOB = stack.Component("bench-trivial-job", "bench.trivial_job")


def _create_topic(settings: Settings, topic: str) -> None:
    """The baseline's output topic, created (and its leader elected) before the job
    starts, so the first reads of its offsets do not race the broker's auto-creation."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    futures = admin.create_topics([NewTopic(topic, settings.kafka.partitions, 1)])
    for future in futures.values():
        try:
            future.result(timeout=30)
        except Exception as exc:  # already there: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def _output_records(settings: Settings, topic: str) -> int:
    """Records in ``topic`` (sum of the partitions' high watermarks); -1 when the broker
    cannot say right now (a leader moving): the caller samples again."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "x"})
    try:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return -1
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in meta.partitions
        )
    except KafkaException:
        return -1
    finally:
        consumer.close()


def run_baseline(settings: Settings, n: int, args: Any) -> dict[str, Any]:
    """Events/s of bench/trivial_job.py over the same steady window of the same backlog."""
    from bench import trivial_job

    say("baseline: the trivial keyed job (bench/trivial_job.py) on the same backlog")
    lo = math.ceil(n * args.warmup_fraction)
    hi = math.floor(n * (1.0 - args.tail_fraction))
    _create_topic(settings, trivial_job.OUTPUT_TOPIC)
    launched = time.monotonic()
    pid = stack.start_component(settings, TRIVIAL_JOB)
    seen: list[tuple[float, int]] = []
    try:
        deadline = launched + args.timeout
        while time.monotonic() < deadline:
            count = _output_records(settings, trivial_job.OUTPUT_TOPIC)
            if count >= 0:
                seen.append((time.monotonic() - launched, count))
            if count >= n:
                break
            if TRIVIAL_JOB.process(settings).pid() is None:
                raise RuntimeError(
                    "the trivial job exited\n" + TRIVIAL_JOB.process(settings).log_tail(30)
                )
            # It drains a backlog ~40x faster than the real job: sample finely.
            time.sleep(0.1)
    finally:
        TRIVIAL_JOB.process(settings).stop()
    start = next((s for s in seen if s[1] >= lo), None)
    end = next((s for s in seen if s[1] >= hi), None)
    out: dict[str, Any] = {"pid": pid, "records": seen[-1][1] if seen else 0}
    first = next((s for s in seen if s[1] > 0), None)
    out["first_record_s"] = round(first[0], 1) if first else None
    if start and end and end[0] > start[0]:
        out["steady_events_per_s"] = round((end[1] - start[1]) / (end[0] - start[0]))
    say(f"baseline: {out.get('steady_events_per_s')} events/s steady")
    return out


# --- report ----------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    parts: list[str] = []
    ds = r["dataset"]
    head = (
        f"backlog: {r['parameters']['events']:,} events ({r['parameters']['dataset']}: "
        f"{ds['users']:,} users, {ds['items']:,} items), load average "
        + ", ".join(f"{k} {v[0]}" for k, v in r["loadavg"].items())
    )
    parts.append(head)
    f = r.get("figures")
    if f:
        steady = f.get("steady_events_per_s_per_interval", {})
        rows: list[tuple[str, Any]] = [
            ("job launch -> metrics endpoint up (s)", f["metrics_endpoint_up_s"]),
            ("job launch -> first event consumed (s)", f["first_event_s"]),
            ("job launch -> last event consumed (s)", f["last_event_consumed_s"]),
            ("job launch -> last feature row applied (s)", f["drained_s"]),
            ("steady window (s after launch)", " - ".join(map(str, f["steady_window_s"]))),
            ("events/s sustained (steady window)", f["steady_events_per_s"]),
            (
                "trivial keyed job, same backlog, same run (events/s)",
                (r.get("baseline") or {}).get("steady_events_per_s", "-"),
            ),
            ("  ratio: this job / the trivial job", f.get("ratio_to_trivial_job", "-")),
            (
                "  per interval p10 / p50 / p90",
                " / ".join(str(steady.get(k, "-")) for k in ("p10", "p50", "p90")),
            ),
            ("events/s overall (first -> last event)", f.get("overall_events_per_s")),
            (
                "events/s end to end (first event -> all rows in Redis)",
                f.get("end_to_end_events_per_s"),
            ),
            ("drain: first event -> last row applied (s)", f.get("drain_after_first_event_s")),
            ("writer tail after the last event (s)", f.get("writer_tail_after_last_event_s")),
            ("CF updates/s (steady window)", f["steady_cf_updates_per_s"]),
            ("CF updates/s overall", f.get("overall_cf_updates_per_s")),
            ("feature rows emitted/s (steady)", f["steady_rows_emitted_per_s"]),
            ("feature rows applied/s by the writer (steady)", f["steady_rows_applied_per_s"]),
            (
                "consumed / dead letters / duplicates",
                f"{f['consumed']:,} / {f['dead_letters']} / {f['duplicates_dropped']}",
            ),
            (
                "cf updates / rows emitted / rows committed",
                f"{f['cf_updates']:,} / {f['feature_rows_emitted']:,} / "
                f"{f['feature_rows_committed_by_writer']:,}",
            ),
        ]
        check = r.get("store_check", {})
        if check:
            rows.append(
                (
                    "store check: users exact / expected",
                    f"{check['users_exact']:,} / {check['users_expected']:,} "
                    f"({'ok' if check['ok'] else 'MISMATCH'})",
                )
            )
        for window in ("steady", "whole"):
            cpu = r.get("cpu", {}).get(window, {}).get("cpu_pct", {})
            for name, value in cpu.items():
                rows.append((f"cpu % of a core ({window}): {name}", value))
        parts.append(format_table(["ingest (Kafka backlog -> job -> Redis)", "value"], rows))
        steady_cpu = r.get("cpu", {}).get("steady", {})
        threads = steady_cpu.get("job_threads", [])[:10]
        if threads:
            rows = [(t["thread"], t["cpu_pct"]) for t in threads]
            rows.append(("sum of Python operator threads", steady_cpu.get("operator_threads_pct")))
            rows.append(
                ("  = CPU µs per event in the job", f.get("operator_thread_cpu_us_per_event"))
            )
            parts.append(format_table(["job JVM threads, steady window", "cpu % of a core"], rows))
    p = r.get("profile")
    if p:
        rows = [(stage, us) for stage, us in p["us_per_event"].items()]
        rows.append(("total", p["total_us_per_event"]))
        parts.append(
            format_table(
                [f"in-process profile, {p['events']:,} events (thread CPU)", "µs/event"], rows
            )
        )
        parts.append(
            format_table(["by operator", "µs/event"], list(p["groups_us_per_event"].items()))
        )
        parts.append(
            f"one interpreter at these costs: ≤ {p['implied_max_events_per_s_one_interpreter']:,}"
            f" events/s; CF alone (evaluate + learn + state): {p['cf_updates_per_s_alone']:,}"
            " updates/s"
        )
        top = p.get("cprofile_top_by_tottime")
        if top:
            parts.append(
                format_table(
                    ["cProfile (tottime)", "calls/ev", "tottime µs/ev", "cumtime µs/ev"],
                    [
                        (
                            e["function"],
                            e["calls_per_event"],
                            e["tottime_us_per_event"],
                            e["cumtime_us_per_event"],
                        )
                        for e in top
                    ],
                )
            )
    return "\n\n".join(parts)
