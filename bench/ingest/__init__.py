"""Scenario ``ingest``: sustained events/s through the whole job, and CF updates/s in it.

    python -m bench ingest [--events 50000] [--dataset movielens|taobao|PATH] [--parallelism N]

On a private stack (:class:`bench.env.BenchStack`: Redis, Kafka, ``feast apply``, the
Flink job on a MiniCluster in thread mode -- or, with ``--parallelism N`` > 1, on a
local standalone cluster of N TaskManagers x 1 slot (:mod:`bench.ingest.cluster`) --
the online-store writer):

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

import os
import time
from dataclasses import asdict
from typing import Any

from bench.env import BenchStack, metric_sum, say
from bench.ingest import jvm_profile
from bench.ingest.backlog import DATASETS, load_backlog, preload
from bench.ingest.baseline import run_baseline
from bench.ingest.cluster import ClusterJob, cluster_sessions, start_cluster
from bench.ingest.figures import figures, verify_store
from bench.ingest.profile import profile_stages
from bench.ingest.report import report
from bench.ingest.sampling import operator_threads_pct, sample_loop, scrape_job
from bench.job_placement import add_separate_item_side_argument
from ops import stack

__all__ = ["DATASETS", "add_arguments", "report", "run_ingest"]


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("ingest")
    g.add_argument("--events", type=int, default=50_000, help="backlog size (events)")
    g.add_argument(
        "--parallelism",
        type=int,
        default=None,
        help="job parallelism (default flink.parallelism); N > 1 runs the job and the "
        "baseline on a local standalone cluster of N TaskManagers x 1 slot",
    )
    add_separate_item_side_argument(g)
    g.add_argument(
        "--dataset",
        default="movielens",
        help="movielens (MovieLens 100K ratings), taobao (UserBehavior sample) or a path",
    )
    g.add_argument(
        "--copies",
        type=int,
        default=1,
        help="the dataset this many times over, each copy with users of its own (same "
        "items, same times): a longer backlog whose steady window follows the JIT warm-up",
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
    g.add_argument(
        "--py-spy",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sample the job's Python inside Flink with py-spy for SECONDS once the steady "
        "window starts (bench/ingest/job_profile.py)",
    )
    g.add_argument(
        "--jvm-profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sample the job's JVM (every thread: Java, native and kernel frames) with "
        "async-profiler for SECONDS once the steady window starts "
        "(bench/ingest/jvm_profile.py)",
    )
    g.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="with --py-spy: sample only the thread holding the GIL (py-spy --gil), so the "
        "shares are of the one interpreter's time, not of the threads' wall time",
    )


# --- scenario --------------------------------------------------------------------------


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_ingest(bench: BenchStack, args: Any) -> dict[str, Any]:
    parallelism = getattr(args, "parallelism", None) or bench.settings.flink.parallelism
    if parallelism < 1:
        raise ValueError(f"--parallelism must be at least 1, not {parallelism}")
    bench.settings = settings = stack.with_job_layout(
        bench.settings, parallelism, getattr(args, "separate_item_side", False)
    )
    on_cluster = settings.flink.on_local_cluster
    try:
        return _run_ingest(bench, args, on_cluster)
    finally:
        if on_cluster:
            from ops.infra import flink_cluster

            if flink_cluster.stop(settings):
                say("flink cluster: stopped")


def _run_ingest(bench: BenchStack, args: Any, on_cluster: bool) -> dict[str, Any]:
    settings = bench.settings
    n = args.events
    events, dataset = load_backlog(
        args.dataset,
        n,
        settings,
        int(time.time() * 1000) - 1000,
        copies=max(1, getattr(args, "copies", 1)),
    )
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
            "parallelism": settings.flink.parallelism,
            "job_runs_on": stack.job_layout(settings),
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

    if args.jvm_profile > 0:
        # Fetched now (Maven, first use only), not when the steady window starts.
        jvm_profile.agent_library(settings.jars_path)
    bench.start_redis()
    bench.start_kafka()
    bench.feast_apply()
    say(f"preloading {n:,} events into Kafka (before the job starts)")
    result["preload"] = preload(settings, events)
    say(f"preloaded in {result['preload']['elapsed_s']}s: {result['preload']['per_topic']}")
    cluster_job: ClusterJob | None = None
    if on_cluster:
        say(f"flink cluster: {stack.job_layout(settings)}")
        result["cluster"] = {"overview": start_cluster(settings)}
        cluster_job = ClusterJob(settings, stack.FLINK_JOB.module, extra_args=("--restore", "none"))
    result["loadavg"]["at_job_start"] = _loadavg()
    launched = time.monotonic()
    sessions: dict[str, int] = {}
    if cluster_job is None:
        sessions["flink-job (+JVM)"] = bench.start_component(stack.FLINK_JOB)
    else:
        # Submitted detached: sampling starts once `flink run` returns (the backlog waits
        # in Kafka), so the time to the first event includes the submission.
        say(f"flink job: submitted as {cluster_job.submit()}")
        sessions.update(cluster_sessions(settings))
    sessions["online-store-writer"] = bench.start_component(stack.WRITER)
    sessions["kafka"] = bench.service_pid("kafka") or 0
    sessions["redis"] = bench.service_pid("redis") or 0
    samples, windows, notes = sample_loop(bench, n, args, launched, sessions, cluster_job)
    if cluster_job is not None:
        result["cluster"]["job_id"] = cluster_job.job_id
        result["cluster"]["vertex_parallelism"] = cluster_job.vertex_parallelism()
        notes.append(
            "on the cluster: events consumed from the source vertex's REST metrics; "
            "cf updates / duplicates summed over every TaskManager's job-metrics endpoint"
        )
    result["loadavg"]["at_end"] = _loadavg()
    result["figures"] = figures(samples, n, windows)
    if "jvm_profile" in windows:
        result["jvm_profile"] = windows.pop("jvm_profile")
    result["cpu"] = {k: v for k, v in windows.items() if isinstance(v, dict)}
    steady = result["cpu"].get("steady")
    rate = result["figures"].get("steady_events_per_s")
    if steady and rate:
        pct = operator_threads_pct(steady["job_threads"])
        steady["operator_threads_pct"] = pct
        # CPU the job's Python operator threads spent per event, to hold against the
        # in-process profile (the difference is Flink's per-record cost around them).
        result["figures"]["operator_thread_cpu_us_per_event"] = round(pct / 100 * 1e6 / rate)
    if "job_profile" in windows:
        result["job_profile"] = windows.pop("job_profile")
    result["notes"] = notes
    result["store_check"] = verify_store(settings, events)
    # The job's own view of why a user may not match: users it forgot (retention).
    job_now, _ = scrape_job(stack.job_metrics_urls(settings))
    result["store_check"]["job_users_expired"] = int(
        metric_sum(job_now, "pz_job_users_expired_total")
    )
    if not args.no_baseline:
        bench.stop_component(stack.WRITER)
        if cluster_job is not None:
            cluster_job.cancel()  # frees the N slots for the baseline
        else:
            bench.stop_component(stack.FLINK_JOB)
        result["baseline"] = run_baseline(settings, n, args, on_cluster=on_cluster)
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
