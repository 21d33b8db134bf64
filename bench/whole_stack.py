"""Scenario ``stack``: Recommend latency on the whole stack under ingest, beside the same
server isolated, in one run.

    python -m bench stack [--rps 300] [--rate 1000] [--duration 30] [--parallelism 1]

On one private stack (:class:`bench.env.BenchStack`: Redis, Kafka, ``feast apply``, the
Flink job, the online-store writer and the gRPC server *with* its Kafka collector, as
``personalize up`` runs it, with access control on):

1. warm-up: the built-in shop simulator sends ``--rate`` events/s
   (:func:`bench.soak.load.ingest_main`, its own process and session) for
   ``--ingest-warmup`` seconds, so users have features and the catalog has items;
2. **stack** phase: ghz, open loop at ``--rps`` (``--async``: requests leave on schedule
   whatever earlier ones do), by server reflection with the API key from a metadata
   file, asks for users the simulator has sent, while ingest goes on at ``--rate``.
   Every answer is logged as an exposure to Kafka and comes back to the job as
   impressions, as in production;
3. ingest stops; the Flink job and the writer are stopped (the job consumes neither
   events nor exposures any more); Kafka, Redis and the *same* server process stay;
4. **isolated** phase: the same ghz load on the same server, same users.

Per phase: p50/p99/p99.9 from ghz's per-request details (the first ``--warmup``
seconds skipped), achieved RPS, errors, CPU per process session (% of one core) and,
in the stack phase, what the write path did (events and exposures into Kafka, consumed
by the job, its lag). The ratio stack p99 / isolated p99 is the figure the noisy shared
machine cannot fake: both phases meet the same neighbours minutes apart.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.env import (
    BenchStack,
    CpuMeter,
    format_table,
    join_draining,
    metric_sum,
    sample_labels,
    say,
    scrape,
)
from bench.ingest.sampling import thread_cpu, threads_of
from bench.job_placement import (
    add_separate_item_side_argument,
    job_sessions,
    start_job,
    stop_cluster,
    stop_job,
)
from bench.stats import histogram_summary, latency_summary
from ops import stack
from personalization.settings import Settings
from traffic.generator import GeneratorConfig

__all__ = ["add_arguments", "report", "run_stack"]

STACK = "stack (ingest + exposures)"
ISOLATED = "isolated (no ingest, job stopped)"
GHZ_CALL = "personalization.v1.Recommender.Recommend"
# The job reads exposures with a source of its own, whose consumer group is the job's
# with this suffix (flink_jobs/user_features_job.py, kafka_source(..., "-exposures")).
EXPOSURES_GROUP_SUFFIX = "-exposures"


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("stack")
    g.add_argument("--rps", type=float, default=300.0, help="Recommend requests/s (open loop)")
    g.add_argument("--rate", type=float, default=1000.0, help="ingest events/s (simulator)")
    g.add_argument("--duration", type=float, default=60.0, help="measured seconds per phase")
    g.add_argument("--warmup", type=float, default=5.0, help="ghz seconds skipped per phase")
    g.add_argument(
        "--ingest-warmup", type=float, default=30.0, help="ingest seconds before the stack phase"
    )
    g.add_argument(
        "--parallelism",
        type=int,
        default=None,
        help="job parallelism (default flink.parallelism); N > 1: a local standalone "
        "cluster of N TaskManagers x 1 slot",
    )
    add_separate_item_side_argument(g)
    g.add_argument(
        "--job-nice",
        type=int,
        default=0,
        help="nice value of the job's session (autogroup) and threads once it runs (the "
        "CPU-weight lever: serving first when the cores are full); 0 = as started",
    )
    g.add_argument("--gen-users", type=int, default=10_000, help="simulated users")
    g.add_argument("--gen-items", type=int, default=5_000, help="simulated items")
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--deadline", type=float, default=1.0, help="Recommend deadline (s)")
    g.add_argument("--ghz-concurrency", type=int, default=50, help="ghz open-loop workers")
    g.add_argument("--channels", type=int, default=4, help="gRPC connections")


# --- the job, either way it runs -------------------------------------------------------


def renice_sessions(sessions: dict[str, int], nice: int) -> int:
    """Lower the CPU weight of every process in ``sessions``; returns threads touched.

    With the kernel's autogroup scheduling on (``kernel.sched_autogroup_enabled``, as
    here) every session is a scheduling group of its own that shares the CPU fairly with
    the others, and a thread's nice value only ranks it within its group: the group's
    own nice (``/proc/<pid>/autogroup``) is what weighs it against the server's. Both
    are set. Linux keeps a nice value per thread (setpriority on a tid); threads started
    later inherit their creator's value."""
    from bench.env import session_processes

    count = 0
    for sid in sessions.values():
        for pid, _ in session_processes(sid):
            with contextlib.suppress(OSError):  # no autogroups, or the process ended
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                continue
            for tid in tids:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    count += 1
                except OSError:
                    pass  # the thread ended meanwhile
    return count


# --- Kafka offsets of the stack phase ---------------------------------------------------


class TopicTotals:
    """Sum of high watermarks of some topics, and of a consumer group's commits on them."""

    def __init__(self, settings: Settings, topics: tuple[str, ...], group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": group,  # never subscribes: reads the group's commits only
                "enable.auto.commit": False,
            }
        )
        meta = self._consumer.list_topics(timeout=10)
        self._tps = [
            TopicPartition(t, p) for t in topics for p in sorted(meta.topics[t].partitions)
        ]

    def read(self) -> tuple[int, int]:
        high = committed = 0
        for tp in self._consumer.committed(self._tps, timeout=5):
            high += self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            committed += max(tp.offset, 0)
        return high, committed

    def close(self) -> None:
        self._consumer.close()


def _recommend_buckets(settings: Settings) -> dict[float, float]:
    """The server's Recommend latency histogram (``pz_serving_rpc_duration_seconds``):
    cumulative count per upper bound in seconds; empty when it cannot be read."""
    url = stack.metrics_urls(settings).get(stack.SERVER.name)
    try:
        metrics = scrape(url) if url else {}
    except OSError:
        return {}
    out: dict[float, float] = {}
    for key, value in metrics.items():
        name, labels = sample_labels(key)
        if name == "pz_serving_rpc_duration_seconds_bucket" and labels.get("method") == "Recommend":
            le = float(labels["le"])  # "+Inf" parses as inf
            out[le] = out.get(le, 0.0) + value
    return out


def server_side(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Recommend latency measured inside the server over a phase (from its handler's
    start to its end: what ghz sees less the wait for a thread, the network and ghz's
    own scheduling), from two scrapes of its histogram; warm-up requests included."""
    return histogram_summary({le: after[le] - before.get(le, 0.0) for le in after})


def _job_counters(settings: Settings) -> dict[str, float]:
    """Summed over every TaskManager's endpoint on the cluster: the user operator (whose
    counters these are) need not be in TaskManager 0."""
    from bench.ingest.sampling import scrape_job

    metrics, up = scrape_job(stack.job_metrics_urls(settings))
    if not up:
        return {}
    return {
        "events": metric_sum(metrics, "pz_job_events_total"),
        "impressions": metric_sum(metrics, "pz_job_impressions_total"),
    }


# --- users and ghz ------------------------------------------------------------------------


def sent_users(config: GeneratorConfig, events: int, limit: int, seed: int) -> list[str]:
    """Distinct users of the simulator's first ``events`` events (the ingest process
    replays the same deterministic stream), shuffled, at most ``limit``."""
    from traffic import TrafficGenerator

    seen: dict[str, None] = {}
    for n, event in enumerate(TrafficGenerator(config).events()):
        if n >= events:
            break
        seen.setdefault(str(event["user_id"]), None)
    users = list(seen)
    random.Random(seed).shuffle(users)
    return users[:limit]


def write_ghz_data(settings: Settings, users: list[str], k: int) -> str:
    """ghz sends the messages of a JSON array in turn (unary calls)."""
    path = settings.run_path / "ghz-stack-data.json"
    path.write_text(json.dumps([{"user_id": u, "k": k} for u in users]))
    return str(path)


def run_ghz_phase(
    ghz: str,
    settings: Settings,
    args: Any,
    data_file: str,
    sessions: dict[str, int],
) -> dict[str, Any]:
    """ghz open loop by reflection; percentiles recomputed from its per-request details."""
    from bench.serving import api_key_file, target

    cmd = [
        ghz,
        "--insecure",
        "--call",
        GHZ_CALL,
        "-D",
        data_file,
        "-z",
        f"{args.duration + args.warmup:g}s",
        "--duration-stop",
        "wait",
        "-t",
        f"{args.deadline:g}s",
        "--connections",
        str(args.channels),
        "--rps",
        f"{args.rps:g}",
        "--async",
        "-c",
        str(args.ghz_concurrency),
        "--skipFirst",
        str(int(args.rps * args.warmup)),
        "-O",
        "json",
    ]
    if api_key_file(settings) is not None:
        cmd += ["--metadata-file", str(settings.run_path / "ghz-metadata.json")]
    cmd.append(target(settings))
    server_before = _recommend_buckets(settings)
    server_sid = sessions.get("grpc-server", 0)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    meter = CpuMeter(sessions, child_label="ghz").start()
    threads_before, threads_t0 = threads_of((server_sid,)), time.monotonic()
    timeout = args.duration + args.warmup + 60
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    cpu = meter.stop()
    threads = thread_cpu(threads_before, threads_of((server_sid,)), time.monotonic() - threads_t0)
    server = server_side(server_before, _recommend_buckets(settings))
    if proc.returncode != 0 and not out.strip():
        raise RuntimeError(f"ghz failed ({proc.returncode}): {err[-2000:]}")
    report_json = json.loads(out)
    details = report_json.get("details") or []
    ok = [d["latency"] / 1e9 for d in details if d.get("status") == "OK"]
    errors: dict[str, int] = {}
    for d in details:
        if d.get("status") != "OK":
            errors[d.get("status", "?")] = errors.get(d.get("status", "?"), 0) + 1
    return {
        "target_rps": args.rps,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sent": len(details),
        "ok": len(ok),
        "errors": errors,
        "error_count": sum(errors.values()),
        # Open loop: requests left on schedule over the measured seconds.
        "achieved_rps": round(len(ok) / args.duration, 1),
        "ghz_reported_rps": round(float(report_json.get("rps", 0.0)), 1),
        "latency": latency_summary(ok),
        "server_side": server,
        "server_threads": server_threads(threads, server_sid),
        "cpu_pct": cpu,
        "command": " ".join(cmd[1:]),
    }


# The server's event-loop thread, as serving/app.py names it for the kernel
# (personalization/thread_names.py): Recommend runs on it.
LOOP_THREAD = "grpc-loop"


def server_threads(threads: list[dict[str, Any]], server_pid: int) -> dict[str, Any]:
    """The server's event loop and the rest of its threads: % of a core, and the
    loop's % of the phase runnable but waiting for a CPU. A loop that waits for a core
    tells a starved server from one whose handlers queue behind each other or behind
    the GIL (README, "Recommend's tail"). ``server_pid``'s main thread stands in for
    the loop when no thread has its name (a server from before it was named)."""
    loop = next((t for t in threads if t["thread"] == LOOP_THREAD), None)
    if loop is None:
        loop = next((t for t in threads if t["tid"] == server_pid), None)
    others = [t for t in threads if t is not loop]
    busiest = others[0] if others else None
    return {
        "loop_cpu_pct": loop["cpu_pct"] if loop else 0.0,
        "loop_runqueue_wait_pct": loop.get("runqueue_wait_pct") if loop else None,
        "other_threads_cpu_pct": round(sum(float(t["cpu_pct"]) for t in others), 1),
        "busiest_other_thread": (
            f"{busiest['thread']} {busiest['cpu_pct']} %" if busiest is not None else ""
        ),
    }


# --- scenario ----------------------------------------------------------------------------


def run_stack(bench: BenchStack, args: Any) -> dict[str, Any]:
    bench.settings = stack.with_job_layout(
        bench.settings, args.parallelism, args.separate_item_side
    )
    try:
        return _run_stack(bench, args)
    finally:
        stop_cluster(bench.settings)


def _run_stack(bench: BenchStack, args: Any) -> dict[str, Any]:
    from bench.serving import find_ghz, wait_catalog, with_access_control
    from bench.soak.load import ingest_main

    ghz = find_ghz()
    if ghz is None:
        raise RuntimeError(
            "ghz not found (PATH, .venv/bin, $GOPATH/bin, ~/go/bin): "
            "bash scripts/bootstrap.sh --bench installs it"
        )
    bench.start_redis()
    bench.start_kafka()
    bench.feast_apply()
    # The server as `personalize up` runs it: access control on, exposures to Kafka.
    bench.settings = settings = with_access_control(bench.settings)
    t0 = time.monotonic()
    start_job(bench)
    bench.start_component(stack.WRITER)
    bench.start_component(stack.SERVER)
    stack.wait_server_ready(settings)
    say("waiting for the pipeline to deliver a probe (Flink job start ~10-60 s)")
    stack.wait_pipeline_ready(settings, timeout_s=240)
    ready_s = round(time.monotonic() - t0, 1)
    say(f"pipeline ready after {ready_s}s")
    if args.job_nice:
        threads = renice_sessions(job_sessions(bench), args.job_nice)
        say(f"flink-job: nice {args.job_nice} on its {threads} threads")

    ctx = mp.get_context("spawn")
    ingest_q: Any = ctx.Queue()
    stop_ingest = ctx.Event()
    ingest_msgs: list[dict[str, Any]] = []
    generator = GeneratorConfig(
        seed=args.seed,
        n_users=args.gen_users,
        n_items=args.gen_items,
        id_prefix=f"stack-{uuid.uuid4().hex[:8]}",
    )
    max_ingest_s = args.ingest_warmup + args.duration + args.warmup + 120.0
    ingest = ctx.Process(
        target=ingest_main,
        args=(
            settings.model_dump_json(),
            args.rate,
            max_ingest_s,
            generator,
            5.0,
            stop_ingest,
            ingest_q,
        ),
        daemon=True,
    )
    phases: dict[str, Any] = {}
    events_only = TopicTotals(
        settings, settings.kafka.event_topics, settings.kafka.flink_consumer_group
    )
    exposures_only = TopicTotals(
        settings,
        (settings.kafka.exposures_topic,),
        settings.kafka.flink_consumer_group + EXPOSURES_GROUP_SUFFIX,
    )
    try:
        ingest.start()
        say(
            f"ingest: {args.rate:g} ev/s (simulator, {args.gen_users:,} users, "
            f"{args.gen_items:,} items); {args.ingest_warmup:g}s before the stack phase"
        )
        time.sleep(args.ingest_warmup)
        waited = wait_catalog(settings)
        # Users whose events left at least 10 s ago: their rows are in Redis by now.
        users = sent_users(
            generator, int(args.rate * max(1.0, args.ingest_warmup - 10.0)), 20_000, args.seed
        )
        data_file = write_ghz_data(settings, users, args.k)
        say(f"ghz asks for {len(users):,} users the simulator sent (catalog after {waited:.1f}s)")

        # --- stack phase
        sessions = {
            **job_sessions(bench),
            "online-store-writer": bench.component_pid(stack.WRITER) or 0,
            "grpc-server": bench.component_pid(stack.SERVER) or 0,
            "kafka": bench.service_pid("kafka") or 0,
            "redis": bench.service_pid("redis") or 0,
            "ingest sender": ingest.pid or 0,
        }
        say(f"{STACK}: ghz open {args.rps:g} rps for {args.duration:g}s (+{args.warmup:g}s)")
        before = (
            time.monotonic(),
            events_only.read(),
            exposures_only.read(),
            _job_counters(settings),
        )
        result = run_ghz_phase(ghz, settings, args, data_file, sessions)
        after = (
            time.monotonic(),
            events_only.read(),
            exposures_only.read(),
            _job_counters(settings),
        )
        result["write_path"] = _write_path(before, after)
        phases[STACK] = result
        _say_phase(STACK, result)

        stop_ingest.set()
        join_draining(ingest, ingest_q, ingest_msgs, 60.0)
        stop_job(bench)
        bench.stop_component(stack.WRITER)
        time.sleep(2.0)  # the stopped processes' last writes settle

        # --- isolated phase: same server, same users, nothing else running but Kafka
        # (the server's exposure log still produces to it) and Redis.
        sessions = {
            "grpc-server": bench.component_pid(stack.SERVER) or 0,
            "kafka": bench.service_pid("kafka") or 0,
            "redis": bench.service_pid("redis") or 0,
        }
        say(f"{ISOLATED}: ghz open {args.rps:g} rps for {args.duration:g}s (+{args.warmup:g}s)")
        high0 = exposures_only.read()[0]
        result = run_ghz_phase(ghz, settings, args, data_file, sessions)
        result["write_path"] = {"exposures_into_kafka": exposures_only.read()[0] - high0}
        phases[ISOLATED] = result
        _say_phase(ISOLATED, result)
    finally:
        stop_ingest.set()
        if ingest.is_alive():
            ingest.terminate()
            ingest.join(timeout=10)
        for totals in (events_only, exposures_only):
            totals.close()

    ingest_done = next((m for m in ingest_msgs if m.get("kind") == "ingest_done"), {})
    ingest_done.pop("users", None)
    stack_p99 = phases[STACK]["latency"].get("p99_ms")
    iso_p99 = phases[ISOLATED]["latency"].get("p99_ms")
    ratio = round(stack_p99 / iso_p99, 2) if stack_p99 and iso_p99 else None
    return {
        "parameters": {
            "rps": args.rps,
            "rate_ev_s": args.rate,
            "duration_s": args.duration,
            "ghz_warmup_s": args.warmup,
            "ingest_warmup_s": args.ingest_warmup,
            "parallelism": settings.flink.parallelism,
            "job_runs_on": stack.job_layout(settings),
            "job_nice": args.job_nice,
            "generator_users": args.gen_users,
            "generator_items": args.gen_items,
            "users_asked_for": len(users),
            "k": args.k,
            "deadline_s": args.deadline,
            "ghz_concurrency": args.ghz_concurrency,
            "channels": args.channels,
            "strategy": settings.ranking.strategy,
            "server": "serving.server with its Kafka collector (exposures logged), "
            "access control on, 1 process",
            "flink": settings.flink.model_dump(),
        },
        "pipeline_ready_s": ready_s,
        "phases": phases,
        "ingest": ingest_done,
        "p99_ratio_stack_over_isolated": ratio,
        "targets": {
            "stack_p99_ms_max": 10.0,
            "ratio_max": 2.0,
            "stack_p99_met": bool(stack_p99 is not None and stack_p99 <= 10.0),
            "ratio_met": bool(ratio is not None and ratio <= 2.0),
        },
    }


def _write_path(before: tuple[Any, ...], after: tuple[Any, ...]) -> dict[str, Any]:
    """Rates of the ingest and the exposures into Kafka and through the job."""
    t0, (ev_hi0, ev_c0), (ex_hi0, ex_c0), job0 = before
    t1, (ev_hi1, ev_c1), (ex_hi1, ex_c1), job1 = after
    dt = max(1e-6, t1 - t0)
    out: dict[str, Any] = {
        "window_s": round(dt, 1),
        "events_into_kafka_per_s": round((ev_hi1 - ev_hi0) / dt, 1),
        "events_committed_by_job_per_s": round((ev_c1 - ev_c0) / dt, 1),
        "event_lag_at_end": ev_hi1 - ev_c1,
        "exposures_into_kafka_per_s": round((ex_hi1 - ex_hi0) / dt, 1),
        "exposures_committed_by_job_per_s": round((ex_c1 - ex_c0) / dt, 1),
        "exposure_lag_at_end": ex_hi1 - ex_c1,
    }
    if job0 and job1:
        # Scraped from the job's endpoint (at N > 1: the one TaskManager serving it).
        out["job_events_per_s"] = round((job1["events"] - job0["events"]) / dt, 1)
        out["job_impressions_per_s"] = round((job1["impressions"] - job0["impressions"]) / dt, 1)
    return out


def _say_phase(name: str, r: dict[str, Any]) -> None:
    lat = r["latency"]
    if not lat.get("count"):
        say(f"  {name}: no successful requests; errors {r['errors']}")
        return
    say(
        f"  {name}: {r['achieved_rps']:,.0f} rps ok, p50 {lat['p50_ms']:.2f} ms, "
        f"p99 {lat['p99_ms']:.2f} ms, p99.9 {lat['p999_ms']:.2f} ms, errors {r['error_count']}"
    )
    say(f"  server side (histogram bounds): {r.get('server_side')}")
    say(f"  server threads: {r.get('server_threads')}")
    say(f"  cpu % of a core: {r['cpu_pct']}; write path: {r.get('write_path')}")


# --- report ------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    p = r["parameters"]
    names = list(r["phases"])
    phases = [r["phases"][n] for n in names]
    rows: list[tuple[Any, ...]] = [
        ("achieved rps (ok)", *(x["achieved_rps"] for x in phases)),
        ("p50 ms", *(x["latency"].get("p50_ms") for x in phases)),
        ("p99 ms", *(x["latency"].get("p99_ms") for x in phases)),
        ("p99.9 ms", *(x["latency"].get("p999_ms") for x in phases)),
        ("max ms", *(x["latency"].get("max_ms") for x in phases)),
        # Inside the server (its histogram: bucket upper bounds), to tell the handler's
        # own time from the wait for a thread or a core.
        ("server-side p50 ms", *(x.get("server_side", {}).get("p50_ms") for x in phases)),
        ("server-side p99 ms", *(x.get("server_side", {}).get("p99_ms") for x in phases)),
        *(
            (label, *(x.get("server_threads", {}).get(key) for x in phases))
            for label, key in SERVER_THREAD_ROWS
        ),
        ("errors", *(_errors(x) for x in phases)),
    ]
    cpu_names: list[str] = []
    for x in phases:
        cpu_names += [c for c in x["cpu_pct"] if c not in cpu_names]
    rows += [(f"cpu % of a core: {c}", *(x["cpu_pct"].get(c) for x in phases)) for c in cpu_names]
    wp_names: list[str] = []
    for x in phases:
        wp_names += [w for w in x.get("write_path", {}) if w not in wp_names]
    rows += [(w, *(x.get("write_path", {}).get(w) for x in phases)) for w in wp_names]
    table = format_table([f"Recommend k={p['k']}, ghz open {p['rps']:g} rps", *names], rows)
    t = r["targets"]
    summary = (
        f"stack p99 / isolated p99 = {r['p99_ratio_stack_over_isolated']} "
        f"(target <= 2: {'met' if t['ratio_met'] else 'NOT met'}); stack p99 <= 10 ms: "
        f"{'met' if t['stack_p99_met'] else 'NOT met'}. Ingest {p['rate_ev_s']:g} ev/s "
        f"(sender achieved {r['ingest'].get('achieved_rate')}), parallelism "
        f"{p['parallelism']} ({p.get('job_runs_on', '')}), job nice {p.get('job_nice', 0)}, "
        f"{p['duration_s']:g}s per phase after {p['ghz_warmup_s']:g}s, "
        f"{p['users_asked_for']:,} users, strategy {p['strategy']}"
    )
    return f"{table}\n\n{summary}"


SERVER_THREAD_ROWS = (
    ("server loop thread: cpu % of a core", "loop_cpu_pct"),
    ("server loop thread: % waiting for a CPU", "loop_runqueue_wait_pct"),
    ("server other threads: cpu % of a core", "other_threads_cpu_pct"),
    ("server busiest other thread", "busiest_other_thread"),
)


def _errors(phase: dict[str, Any]) -> str:
    if not phase["error_count"]:
        return "0"
    return ", ".join(f"{k} {v}" for k, v in phase["errors"].items())
