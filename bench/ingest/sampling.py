"""Sampling the running job: events consumed, CF updates, changelog offsets, CPU per thread."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import (
    RESULTS_DIR,
    BenchStack,
    CpuMeter,
    metric_sum,
    proc_stat_entries,
    say,
    scrape,
)
from bench.ingest import job_profile, jvm_profile
from bench.ingest.cluster import ClusterJob
from ops import stack
from personalization.settings import Settings

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
        self.feed = partitions(k.item_factors_topic) if k.item_factors_topic in meta.topics else []

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

    def feed_records(self) -> int:
        """Records on the item-factor feed (the CF loop from the item operators back to
        every user subtask), all written by this run's job."""
        return sum(
            self.writer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in self.feed
        )

    def close(self) -> None:
        self.writer.close()
        self.flink.close()


# tid -> (thread name, utime + stime ticks, ns runnable but waiting for a CPU or -1)
ThreadTimes = dict[int, tuple[str, int, int]]


def _runqueue_wait_ns(pid: int, tid: int) -> int:
    """The thread's total time runnable but not running (``schedstat``'s second field:
    waiting for a CPU), -1 where the kernel keeps no scheduler statistics."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _thread_ticks(sid: int) -> ThreadTimes:
    """Every thread of session ``sid``: its CPU ticks and its run-queue wait."""
    return {
        tid: (name, int(fields[11]) + int(fields[12]), _runqueue_wait_ns(pid, tid))
        for pid, _, process in proc_stat_entries()
        if int(process[3]) == sid
        for tid, name, fields in proc_stat_entries(f"/proc/{pid}/task")
    }


def thread_cpu(before: ThreadTimes, after: ThreadTimes, seconds: float) -> list[dict[str, Any]]:
    """% of a core per thread over the interval, busiest first (threads > 1 %), and the
    % of the interval it spent runnable but waiting for a CPU. Two Python operators in
    one interpreter show as both waiting ~40 % with the machine not full: the GIL's
    hand-over from one thread to the other goes through the run queue (README, "the
    item side apart")."""
    tck = os.sysconf("SC_CLK_TCK")
    span = max(seconds, 1e-6)
    rows = []
    for tid, (name, ticks, wait_ns) in after.items():
        _, ticks0, wait0 = before.get(tid, (name, 0, 0))
        pct = 100.0 * (ticks - ticks0) / tck / span
        if pct >= 1.0:
            row: dict[str, Any] = {"thread": name, "tid": tid, "cpu_pct": round(pct, 1)}
            if wait_ns >= 0 and wait0 >= 0:
                row["runqueue_wait_pct"] = round(100.0 * (wait_ns - wait0) / 1e9 / span, 1)
            rows.append(row)
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


def threads_of(sids: tuple[int, ...]) -> ThreadTimes:
    """Every thread of the sessions ``sids`` (the bench starts each component in a
    session of its own): CPU ticks and run-queue wait, for :func:`thread_cpu`."""
    out: ThreadTimes = {}
    for sid in sids:
        out.update(_thread_ticks(sid))
    return out


class Window:
    """CPU of the stack's processes (and the job's threads: those of every session in
    ``job_sids``, the MiniCluster job or each TaskManager) between two samples."""

    def __init__(self, sessions: dict[str, int], job_sids: tuple[int, ...]) -> None:
        self.meter = CpuMeter(sessions).start()
        self.job_sids = tuple(s for s in job_sids if s)
        self.threads = threads_of(self.job_sids)
        self.started = time.monotonic()

    def close(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        after = threads_of(self.job_sids)
        return {
            "cpu_pct": self.meter.stop(),
            "job_threads": thread_cpu(self.threads, after, elapsed),
        }


def scrape_job(urls: list[str]) -> tuple[dict[str, float], bool]:
    """The job's counters summed over its TaskManagers' endpoints; up if any answered
    (an endpoint is not up until its operators have opened)."""
    total: dict[str, float] = {}
    up = False
    for url in urls:
        try:
            got = scrape(url)
        except OSError:
            continue
        up = True
        for key, value in got.items():
            total[key] = total.get(key, 0.0) + value
    return total, up


def sample_loop(
    bench: BenchStack,
    n: int,
    args: Any,
    launched: float,
    sessions: dict[str, int],
    cluster_job: ClusterJob | None = None,
) -> tuple[list[Sample], dict[str, Any], list[str]]:
    """Sample until the backlog is consumed and the writer has applied every row.

    ``cluster_job``: the job runs on the standalone cluster (parallelism > 1); events
    consumed then come from its source vertex's REST metrics (see bench/ingest/cluster.py)
    and the job threads are those of every TaskManager session in ``sessions``."""
    settings = bench.settings
    if cluster_job is None:
        job_sids: tuple[int, ...] = (sessions.get("flink-job (+JVM)", 0),)
    else:
        job_sids = tuple(sid for name, sid in sessions.items() if "taskmanager" in name)
    urls = stack.metrics_urls(settings)
    job_urls = stack.job_metrics_urls(settings)
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
    spies: list[job_profile.PySpy] = []
    profilers: list[jvm_profile.AsyncProfiler] = []
    profilers_stop_at = 0.0
    next_at = time.monotonic()
    try:
        while True:
            next_at += args.sample_interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic() - launched
            if now > args.timeout:
                notes.append(f"timed out after {args.timeout:.0f}s")
                break
            if cluster_job is not None:
                cluster_job.check_running()
            elif bench.component_pid(stack.FLINK_JOB) is None:
                raise RuntimeError("the Flink job exited\n" + bench.log_tail(stack.FLINK_JOB))
            job, up = scrape_job(job_urls)
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
            consumed = int(metric_sum(job, "pz_job_events_total")) + dead
            if cluster_job is not None:
                from_rest = cluster_job.source_records()
                consumed = from_rest if from_rest is not None else (last.consumed if last else 0)
                up = up or consumed > 0
            s = Sample(
                t=round(now, 3),
                job_up=up,
                consumed=consumed,
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
                whole = Window(sessions, job_sids)
            if steady is None and s.consumed >= lo:
                steady = Window(sessions, job_sids)
                windows["steady_from_t"] = s.t
                if args.py_spy > 0:
                    spies = _start_py_spy(
                        settings.run_path, job_sids, args.py_spy, args.py_spy_gil, notes
                    )
                if args.jvm_profile > 0:
                    profilers = _start_jvm_profile(settings, job_sids, args.jvm_profile, notes)
                    profilers_stop_at = time.monotonic() + args.jvm_profile
            if profilers and time.monotonic() >= profilers_stop_at:
                windows["jvm_profile"] = _finish_jvm_profile(profilers, notes)
                profilers = []
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
        try:
            windows["item_factor_feed_records"] = offsets.feed_records()
        except Exception as exc:  # a figure, not the run's outcome
            notes.append(f"feed records: {exc!r}")
    finally:
        offsets.close()
        if profilers:  # the run ended first: what was sampled so far
            windows["jvm_profile"] = _finish_jvm_profile(profilers, notes)
    if whole is not None:
        windows["whole"] = whole.close()
    if spies:
        windows["job_profile"] = _finish_py_spy(spies, args.py_spy, notes)
    return samples, windows, notes


def _start_py_spy(
    run_dir: Path, job_sids: tuple[int, ...], seconds: float, gil: bool, notes: list[str]
) -> list[job_profile.PySpy]:
    """One py-spy recording per JVM of the job (its MiniCluster, or each TaskManager)."""
    spies = []
    for pid in (p for sid in job_sids for p in job_profile.java_pids(sid)):
        try:
            raw = run_dir / f"py-spy-{pid}.raw"
            spies.append(job_profile.PySpy(pid, seconds, raw, gil=gil))
        except (OSError, RuntimeError) as exc:
            notes.append(f"py-spy on {pid}: {exc}")
    say(f"py-spy: sampling {len(spies)} job JVM(s) for {seconds:.0f}s")
    return spies


def _finish_py_spy(
    spies: list[job_profile.PySpy], seconds: float, notes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spy in spies:
        raw = spy.wait(timeout=seconds + 60)
        if raw is None:
            notes.append(f"py-spy failed: {spy.failure()}")
            continue
        out[raw.stem] = job_profile.summarize(raw)
        out[raw.stem]["raw"] = _keep_beside_results(raw, raw.stem, ".raw")
    return out


def _keep_beside_results(recording: Path, stem: str, suffix: str) -> str:
    """A copy of ``recording`` in the results dir: the run directory goes with the
    stack, and the stacks serve a flame graph or another cut than the report's."""
    kept = RESULTS_DIR / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recording, kept)
    return str(kept)


def _start_jvm_profile(
    settings: Settings, job_sids: tuple[int, ...], seconds: float, notes: list[str]
) -> list[jvm_profile.AsyncProfiler]:
    """async-profiler in each JVM of the job (its MiniCluster, or each TaskManager). The
    agent was fetched before the job started (``bench.ingest._run_ingest``)."""
    library = jvm_profile.agent_library(settings.jars_path)
    profilers = []
    for pid in (p for sid in job_sids for p in job_profile.java_pids(sid)):
        profiler = jvm_profile.AsyncProfiler(pid, library, settings.run_path / f"jvm-{pid}.txt")
        try:
            profiler.start()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            notes.append(f"async-profiler on {pid}: {exc}")
            continue
        profilers.append(profiler)
    say(f"async-profiler: sampling {len(profilers)} job JVM(s) for {seconds:.0f}s")
    return profilers


def _finish_jvm_profile(
    profilers: list[jvm_profile.AsyncProfiler], notes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for profiler in profilers:
        try:
            collapsed = profiler.stop()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            notes.append(f"async-profiler on {profiler.pid}: {exc}")
            continue
        name = f"jvm-{profiler.pid}"
        out[name] = jvm_profile.summarize(collapsed)
        out[name]["event"] = profiler.event
        out[name]["collapsed"] = _keep_beside_results(collapsed, name, ".collapsed")
    return out
