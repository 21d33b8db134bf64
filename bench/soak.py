"""Scenario ``soak``: a bounded mixed run (steady ingest + steady Recommend load).

    python -m bench soak --minutes 10 --rate 150 --rps 80

On a private stack (Redis, Kafka, the Flink job, the online-store writer, the gRPC
server; :mod:`bench.env`) two load processes run side by side for ``--minutes``:

* ingest: the built-in shopping simulator sent through
  :class:`~traffic.TrafficSender` at ``--rate`` events/s (event times
  stamped at send), over a bounded key space (``--gen-users`` users, ``--gen-items``
  items), so the job's keyed state and Redis reach their working-set size during the
  warm-up and growth after it is not new data (the ``redis keys`` column shows it);
* serving: an open-loop ``Recommend`` load at ``--rps`` (grpc.aio, the request path
  of :mod:`bench.loadgen`, deadline ``--deadline``) for users that already have
  features: the load process replays the same deterministic simulator and asks only
  for users whose events were sent at least a few seconds earlier.

Every ``--sample-interval`` seconds the driver records the RSS (and anonymous RSS) of
every process of the stack (the job's Python launcher and its JVM, which runs the
Python operators in thread mode; the writer; the server; Redis; Kafka), the JVMs' heap
(``jstat -gc``), the writer's and the job's consumer lag, a short burst of freshness
probes (:func:`bench.freshness.probe_loop`), the dead-letter topic, Redis' key count,
the components' error counters, the CPU used meanwhile (others = other tenants), and
the serving load's errors and latency for that interval.

At the end it checks that every event sent reached the features (the sum of the
simulated users' ``events_total`` in Redis equals the events sent, and the job's
accepted-events counter equals events sent plus probes: no replay), fits a line to
each process's RSS after the warm-up, prints the tables and a verdict, and fails
(exit 1) when anything counted as an error is non-zero or a process's memory is not
flat. Errors: Recommend calls that failed or missed their deadline, server RPC errors,
undelivered events, dead letters, writer errors, events missing from the features,
lost freshness probes, ERROR lines or tracebacks in the logs, a stack process exiting.
Answers served with a fallback (Redis slower than its 50 ms socket timeout: trending,
``personalized=false``, by design) are reported as degraded, not as errors.

Flat: a fitted RSS slope below ``--max-slope-mb-min`` (default 1 MB/min) after the
warm-up. At 150 events/s and 80 requests/s that detects a leak of ~116 bytes per event
or ~218 bytes per request in one process; the legitimate growth of the job's state in
a bounded key space (dedup ids, at most 256 per user) is a few hundred KB per minute.
The JVMs (Kafka, the job) start with ``-XX:+AlwaysPreTouch`` (``JAVA_TOOL_OPTIONS``;
``--no-pretouch`` to skip): their committed heap is resident from the start, instead
of being touched region by region for minutes, which reads as RSS growth but is not
(``jstat`` shows the committed heap; growth beyond it would be heap expansion or
off-heap memory, which the soak is meant to catch).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.env import (
    BENCH_SERVER,
    BenchStack,
    CpuMeter,
    format_table,
    latency_summary,
    metric_sum,
    proc_stat_entries,
    say,
    scrape,
)
from ops import stack
from personalization.redis_client import redis_client
from personalization.settings import Settings, settings_from_json
from traffic.generator import GeneratorConfig

MB = 1024 * 1024
JAVA_TOOL_OPTIONS = "JAVA_TOOL_OPTIONS"
# A JVM's committed heap is in its RSS from the start, instead of page by page as the
# collector first touches regions (which reads as minutes of "growth" that is not).
PRETOUCH = "-XX:+AlwaysPreTouch"


def add_arguments(parser: Any) -> None:
    s = parser.add_argument_group("soak")
    s.add_argument("--minutes", type=float, default=10.0, help="mixed load duration")
    s.add_argument("--rate", type=float, default=150.0, help="ingest events/s")
    s.add_argument("--rps", type=float, default=80.0, help="Recommend requests/s (open loop)")
    s.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="excluded from the memory fit (default 2, at most a third of --minutes)",
    )
    s.add_argument("--sample-interval", type=float, default=20.0, help="seconds")
    s.add_argument("--probe-seconds", type=float, default=3.0, help="freshness probes/sample")
    s.add_argument("--gen-users", type=int, default=1_000, help="simulated users (key space)")
    s.add_argument("--gen-items", type=int, default=500, help="simulated items (catalog)")
    s.add_argument("--serve-delay", type=float, default=15.0, help="ingest before serving")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--deadline", type=float, default=1.0, help="Recommend deadline (s)")
    s.add_argument("--channels", type=int, default=2, help="gRPC connections")
    s.add_argument("--drain-timeout", type=float, default=180.0, help="wait for all events")
    s.add_argument(
        "--max-slope-mb-min", type=float, default=1.0, help="flat: fitted RSS slope below this"
    )
    s.add_argument("--no-jstat", action="store_true", help="skip JVM heap sampling")
    s.add_argument(
        "--no-pretouch",
        action="store_true",
        help="do not start the JVMs with -XX:+AlwaysPreTouch (see the module docstring)",
    )


# --- ingest (its own process) ----------------------------------------------------------


def _ingest(
    settings_json: str,
    rate: float,
    max_duration_s: float,
    config: GeneratorConfig,
    progress_s: float,
    stop: Any,
    out: Any,
) -> None:
    os.setsid()  # own session: a Ctrl-C in the terminal reaches only the driver
    from traffic import TrafficGenerator, TrafficSender

    settings = settings_from_json(settings_json)
    users: set[str] = set()

    def events() -> Iterator[dict[str, Any]]:
        for event in TrafficGenerator(config).events():
            if stop.is_set():
                return
            users.add(event["user_id"])
            yield event

    def progress(p: Any) -> None:
        out.put(
            {
                "kind": "ingest",
                "t": time.time(),
                "sent": p.sent,
                "delivered": p.delivered,
                "errors": p.errors,
                "interval_rate": round(p.interval_rate, 1),
            }
        )

    sender = TrafficSender(
        settings,
        rate=rate,
        rewrite_time_to_now=True,
        speed=math.inf,  # every event stamped with its send time
        max_duration_s=max_duration_s,
        progress=progress,
        progress_interval_s=progress_s,
    )
    out.put({"kind": "ingest_start", "t": time.time()})
    stats = sender.send(events())
    out.put(
        {
            "kind": "ingest_done",
            "sent": stats.sent,
            "delivered": stats.delivered,
            "errors": stats.errors,
            "undelivered": stats.undelivered,
            "elapsed_s": round(stats.elapsed_s, 1),
            "achieved_rate": round(stats.rate, 1),
            "first_error": stats.first_error,
            "stopped_by": stats.stopped_by,
            "per_topic": dict(stats.per_topic),
            "per_type": dict(stats.per_type),
            "users": sorted(users),
        }
    )


# --- serving load (its own process) ----------------------------------------------------


@dataclass(frozen=True)
class ServeLoad:
    """What the serving load process does (pickled into it)."""

    target: str
    rps: float
    duration_s: float
    interval_s: float
    k: int
    deadline_s: float
    channels: int
    seed: int
    # Users to ask for: those of the simulator's events sent at least ``margin_s`` ago,
    # replayed from the same deterministic generator as the ingest process.
    generator: GeneratorConfig
    ingest_rate: float
    ingest_t0: float  # wall clock of the ingest's first send
    margin_s: float = 15.0


class UserPool:
    """Users of the simulator's events sent by now minus a margin, growing with time."""

    def __init__(self, load: ServeLoad) -> None:
        from traffic import TrafficGenerator

        self.load = load
        self._events = TrafficGenerator(load.generator).events()
        self._seen: set[str] = set()
        self.users: list[str] = []
        self.events = 0

    def grow(self) -> None:
        load = self.load
        due = int(load.ingest_rate * (time.time() - load.ingest_t0 - load.margin_s))
        while self.events < due:
            user = next(self._events)["user_id"]
            self.events += 1
            if user not in self._seen:
                self._seen.add(user)
                self.users.append(user)


def _serve(load: ServeLoad, out: Any) -> None:
    os.setsid()
    asyncio.run(_serve_async(load, out))


async def _serve_async(load: ServeLoad, out: Any) -> None:
    """Open loop at ``rps`` (latency from the scheduled send, as :mod:`bench.loadgen`);
    one summary per ``interval_s`` on ``out``, then the totals."""
    import grpc

    from bench.loadgen import Recorder, _call, _summary
    from personalization.v1 import recommender_pb2, recommender_pb2_grpc

    target, rps, duration_s, interval_s = load.target, load.rps, load.duration_s, load.interval_s
    k, deadline_s, n_channels = load.k, load.deadline_s, load.channels
    pool = UserPool(load)
    pool.grow()
    if not pool.users:
        raise RuntimeError("no user has been sent long enough ago to ask for")
    loop = asyncio.get_running_loop()
    rng = random.Random(load.seed)
    chans = [
        grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", i)]
        )
        for i in range(n_channels)
    ]
    for channel in chans:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    stubs = [recommender_pb2_grpc.RecommenderStub(ch) for ch in chans]
    start = loop.time() + 0.05
    wall_start = time.time() + (start - loop.time())
    end = start + duration_s
    n = max(1, math.ceil(duration_s / interval_s - 1e-9))
    bounds = [(start + i * interval_s, min(end, start + (i + 1) * interval_s)) for i in range(n)]
    # Each recorder counts whatever it is handed; the interval is chosen at send time.
    recs = [Recorder(-math.inf, math.inf) for _ in range(n)]
    cpu0 = time.process_time()

    def report(i: int) -> dict[str, Any]:
        r = recs[i]
        t_from, t_to = bounds[i]
        span = t_to - t_from
        return {
            "kind": "serve",
            "i": i,
            "t_from_s": round(t_from - start, 1),
            "t_to_s": round(t_to - start, 1),
            "sent": r.sent_counted,
            "ok": r.ok,
            "ok_rps": round(r.ok / span, 1) if span > 0 else 0.0,
            "errors": dict(r.errors),
            "error_count": sum(r.errors.values()),
            "lost": r.sent_counted - r.ok - sum(r.errors.values()),
            "personalized": r.personalized,
            "empty": r.empty,
            "latency": _summary(r.latency),
        }

    async def reporter() -> None:
        for i, (_, t_to) in enumerate(bounds):
            # Every request of the interval has answered or timed out by then.
            await asyncio.sleep(max(0.0, t_to + deadline_s + 0.3 - loop.time()))
            out.put(report(i))

    reporting = loop.create_task(reporter())
    tasks: set[asyncio.Task[None]] = set()
    gap = 1.0 / rps
    i = 0
    next_grow = start + 1.0
    while True:
        now = loop.time()
        while True:
            scheduled = start + i * gap
            if scheduled > now or scheduled >= end:
                break
            rec = recs[min(int((scheduled - start) // interval_s), n - 1)]
            request = recommender_pb2.RecommendRequest(user_id=rng.choice(pool.users), k=k)
            task = loop.create_task(
                _call(stubs[i % len(stubs)], request, deadline_s, scheduled, rec, loop)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            rec.sent_counted += 1
            i += 1
        if start + i * gap >= end:
            break
        if now >= next_grow:
            pool.grow()
            next_grow = now + 1.0
        await asyncio.sleep(max(0.0, start + i * gap - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=deadline_s + 1.0)
    await reporting
    for channel in chans:
        await channel.close()
    errors: dict[str, int] = {}
    for r in recs:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    sent = sum(r.sent_counted for r in recs)
    ok = sum(r.ok for r in recs)
    out.put(
        {
            "kind": "serve_done",
            "wall_start": wall_start,
            "duration_s": duration_s,
            "target_rps": rps,
            "users_asked_for_at_end": len(pool.users),
            "sent": sent,
            "ok": ok,
            "achieved_rps": round(ok / duration_s, 1),
            "errors": errors,
            "error_count": sum(errors.values()),
            "lost": sent - ok - sum(errors.values()),
            "personalized": sum(r.personalized for r in recs),
            "empty": sum(r.empty for r in recs),
            "latency": _summary([x for r in recs for x in r.latency]),
            "self_cpu_pct": round(100.0 * (time.process_time() - cpu0) / duration_s, 1),
        }
    )


# --- memory ------------------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap"):
                out[key] = int(value.split()[0])
    return out


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every live process in session ``sid``."""
    return sorted(
        (pid, comm)
        for pid, comm, fields in proc_stat_entries()
        if fields and fields[0] not in ("Z", "X") and int(fields[3]) == sid
    )


def memory_sample(sessions: dict[str, int]) -> dict[str, dict[str, Any]]:
    """label -> {pid, component, comm, rss_mb, anon_mb} for every process of the stack."""
    out: dict[str, dict[str, Any]] = {}
    for component, sid in sessions.items():
        for pid, comm in session_processes(sid):
            kb = _status_kb(pid)
            if "VmRSS" not in kb:
                continue
            out[f"{component}/{comm}[{pid}]"] = {
                "pid": pid,
                "component": component,
                "comm": comm,
                "rss_mb": round(kb["VmRSS"] / 1024, 1),
                "anon_mb": round(kb.get("RssAnon", 0) / 1024, 1),
            }
    return out


def jvm_heap(pid: int) -> dict[str, float] | None:
    """Heap of a JVM from ``jstat -gc`` (MB): used, committed, old generation used."""
    jstat = shutil.which("jstat")
    if not jstat:
        return None
    try:
        env = {k: v for k, v in os.environ.items() if k != JAVA_TOOL_OPTIONS}
        done = subprocess.run(
            [jstat, "-gc", str(pid)],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < 2:
        return None
    row = dict(zip(lines[0].split(), lines[1].split(), strict=False))

    def kb(*names: str) -> float:
        total = 0.0
        for name in names:
            with contextlib.suppress(KeyError, ValueError):
                total += float(row[name])
        return total

    return {
        "heap_used_mb": round(kb("S0U", "S1U", "EU", "OU") / 1024, 1),
        "heap_committed_mb": round(kb("S0C", "S1C", "EC", "OC") / 1024, 1),
        "old_used_mb": round(kb("OU") / 1024, 1),
        "metaspace_mb": round(kb("MU") / 1024, 1),
        "young_gcs": kb("YGC"),
        "full_gcs": kb("FGC"),
    }


def fit_slope(ts_s: list[float], values: list[float]) -> float:
    """Least-squares slope in units per minute (0 with fewer than 2 points)."""
    if len(ts_s) < 2 or max(ts_s) - min(ts_s) <= 0:
        return 0.0
    slope, _ = np.polyfit(np.asarray(ts_s) / 60.0, np.asarray(values), 1)
    return float(slope)


def memory_verdict(
    samples: list[dict[str, Any]], warmup_s: float, max_slope: float
) -> list[dict[str, Any]]:
    """Per process present from the end of the warm-up to the end: start, end, slope."""
    window = [s for s in samples if s["t_s"] >= warmup_s - 1e-6]
    if len(window) < 2:
        return []
    first, last = window[0]["memory"], window[-1]["memory"]
    rows = []
    for label, start in first.items():
        if label not in last:
            continue  # a short-lived child (e.g. Redis' AOF rewrite fork)
        points = [(s["t_s"], s["memory"][label]) for s in window if label in s["memory"]]
        ts = [t for t, _ in points]
        rss = [m["rss_mb"] for _, m in points]
        anon = [m["anon_mb"] for _, m in points]
        slope = fit_slope(ts, rss)
        end = last[label]
        rows.append(
            {
                "process": label,
                "component": start["component"],
                "rss_start_mb": start["rss_mb"],
                "rss_end_mb": end["rss_mb"],
                "rss_peak_mb": max(rss),
                "growth_mb": round(end["rss_mb"] - start["rss_mb"], 1),
                "growth_pct": round(100.0 * (end["rss_mb"] / start["rss_mb"] - 1.0), 2)
                if start["rss_mb"]
                else None,
                "slope_mb_per_min": round(slope, 3),
                "anon_start_mb": start["anon_mb"],
                "anon_end_mb": end["anon_mb"],
                "anon_slope_mb_per_min": round(fit_slope(ts, anon), 3),
                "points": len(points),
                "flat": slope < max_slope,
            }
        )
    return rows


# --- counters ----------------------------------------------------------------------------


class TopicCounter:
    """Sum of the high watermarks of a topic's partitions (messages ever written)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"pz-soak-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
            }
        )
        meta = self._consumer.list_topics(topic, timeout=10)
        self._tps = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]

    def count(self) -> int:
        return sum(
            self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in self._tps
        )

    def close(self) -> None:
        self._consumer.close()


def events_in_features(settings: Settings, users: list[str]) -> tuple[int, int]:
    """(sum of ``events_total`` over ``users``, users with a row) from the online store."""
    from personalization.privacy import pseudonymizer
    from serving.online_features import UserFeatureReader

    stored = pseudonymizer(settings.privacy.hmac_secret)  # the job's key for a user
    reader = UserFeatureReader(settings)
    try:
        total_events = rows = 0
        for user in users:
            features = reader.read(stored(user))
            if features is not None:
                rows += 1
                total_events += features.events_total
        return total_events, rows
    finally:
        reader.close()


def count_log_errors(settings: Settings) -> dict[str, int]:
    """ERROR lines and tracebacks in the logs of the job, the writer and the server."""
    out: dict[str, int] = {}
    for component in (stack.FLINK_JOB, stack.WRITER, BENCH_SERVER):
        try:
            text = component.process(settings).logfile.read_text(errors="replace")
        except OSError:
            continue
        out[component.name] = sum(
            1 for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")
        )
    return out


# --- scenario ----------------------------------------------------------------------------


def _drain(q: Any, into: list[dict[str, Any]]) -> None:
    while True:
        try:
            into.append(q.get_nowait())
        except queue.Empty:
            return


def _join_draining(proc: Any, q: Any, into: list[dict[str, Any]], timeout_s: float) -> None:
    """Join a child that reports on ``q``, emptying the queue meanwhile (a child with
    unflushed queue items cannot exit)."""
    deadline = time.monotonic() + timeout_s
    while proc.is_alive() and time.monotonic() < deadline:
        _drain(q, into)
        proc.join(timeout=0.5)
    _drain(q, into)


def _wait_message(
    proc: Any, q: Any, into: list[dict[str, Any]], kind: str, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _drain(q, into)
        found = next((m for m in into if m["kind"] == kind), None)
        if found is not None:
            return found
        if not proc.is_alive():
            raise RuntimeError(f"{kind}: the process exited ({proc.exitcode})")
        time.sleep(0.2)
    raise TimeoutError(f"no {kind} message in {timeout_s:.0f}s")


def _stop_child(proc: Any, name: str) -> None:
    if proc is None or not proc.is_alive():
        return
    proc.terminate()
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
    say(f"{name}: stopped")


def run_soak(bench: BenchStack, args: Any) -> dict[str, Any]:
    from bench.freshness import OffsetSampler, _pid_of, start_pipeline
    from bench.serving import target, wait_catalog
    from ops.infra import kafka_broker

    settings = bench.settings
    duration_s = args.minutes * 60.0
    warmup_min = args.warmup_minutes if args.warmup_minutes is not None else 2.0
    warmup_s = min(warmup_min * 60.0, duration_s / 3.0)
    interval_s = args.sample_interval
    id_prefix = f"soak-{uuid.uuid4().hex[:8]}"

    saved_tool_options = os.environ.get(JAVA_TOOL_OPTIONS)
    if not args.no_pretouch:
        os.environ[JAVA_TOOL_OPTIONS] = " ".join(x for x in (saved_tool_options, PRETOUCH) if x)
    try:
        ready_s = start_pipeline(bench)  # Kafka and the job's JVM inherit the variable
    finally:
        if saved_tool_options is None:
            os.environ.pop(JAVA_TOOL_OPTIONS, None)
        else:
            os.environ[JAVA_TOOL_OPTIONS] = saved_tool_options
    bench.start_component(BENCH_SERVER)
    stack.wait_server_ready(settings)

    ctx = mp.get_context("spawn")
    ingest_q: Any = ctx.Queue()
    serve_q: Any = ctx.Queue()
    stop_ingest = ctx.Event()
    ingest: Any = None
    serve: Any = None
    offsets: OffsetSampler | None = None
    dlq_counter: TopicCounter | None = None
    ingest_msgs: list[dict[str, Any]] = []
    serve_msgs: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    probe_latencies: list[float] = []
    exits: list[str] = []
    try:
        # Ingest runs until the serving load is over (bounded by a safety limit).
        generator = GeneratorConfig(
            seed=args.seed, n_users=args.gen_users, n_items=args.gen_items, id_prefix=id_prefix
        )
        ingest = ctx.Process(
            target=_ingest,
            args=(
                settings.model_dump_json(),
                args.rate,
                duration_s + args.serve_delay + 300.0,
                generator,
                interval_s,
                stop_ingest,
                ingest_q,
            ),
            daemon=True,
        )
        ingest.start()
        say(
            f"ingest: {args.rate:g} ev/s (simulator, {args.gen_users:,} users, "
            f"{args.gen_items:,} items); serving starts in {args.serve_delay:g}s"
        )
        ingest_t0 = _wait_message(ingest, ingest_q, ingest_msgs, "ingest_start", 120.0)["t"]
        time.sleep(max(0.0, ingest_t0 + args.serve_delay - time.time()))
        waited = wait_catalog(settings)
        say(f"server catalog has items ({waited:.1f}s)")

        sessions = {
            "flink-job": bench.component_pid(stack.FLINK_JOB) or 0,
            "writer": bench.component_pid(stack.WRITER) or 0,
            "server": bench.component_pid(BENCH_SERVER) or 0,
            "redis": _pid_of(bench, "redis"),
            "kafka": kafka_broker.process(settings).pid() or 0,
        }
        missing = [name for name, sid in sessions.items() if not sid]
        if missing:
            raise RuntimeError(f"no pid for {missing}")
        load = ServeLoad(
            target=target(settings),
            rps=args.rps,
            duration_s=duration_s,
            interval_s=interval_s,
            k=args.k,
            deadline_s=args.deadline,
            channels=args.channels,
            seed=args.seed,
            generator=generator,
            ingest_rate=args.rate,
            ingest_t0=ingest_t0,
            margin_s=min(15.0, args.serve_delay / 2),
        )
        serve = ctx.Process(target=_serve, args=(load, serve_q), daemon=True)
        serve.start()
        say(
            f"serving load: {args.rps:g} RPS open loop for {args.minutes:g} min "
            f"(sampling every {interval_s:g}s, memory fit after {warmup_s / 60:.1f} min warm-up)"
        )
        offsets = OffsetSampler(settings, interval_s=1.0)  # lags once a second
        offsets.start()
        dlq_counter = TopicCounter(settings, settings.kafka.dlq_topic)
        urls = stack.metrics_urls(settings)
        server_url = f"http://{settings.metrics.host}:{settings.metrics.serving_port}/metrics"
        cpu_sessions = {**sessions, "ingest sender": ingest.pid or 0}
        meter = CpuMeter(cpu_sessions).start()
        interval_meter = CpuMeter(cpu_sessions).start()
        t0 = time.monotonic()
        k = 0
        while True:
            final = k * interval_s >= duration_s - 1e-6
            if final:
                # After the load: its last interval report comes deadline + 0.3 s later.
                _join_draining(serve, serve_q, serve_msgs, args.deadline + 30.0)
            else:
                time.sleep(max(0.0, t0 + k * interval_s - time.monotonic()))
            t_s = time.monotonic() - t0
            sample = _sample(
                settings,
                sessions,
                offsets,
                dlq_counter,
                urls,
                server_url,
                jstat=not args.no_jstat,
                probe_seconds=0.0 if final else args.probe_seconds,
            )
            sample["t_s"] = round(t_s, 1)
            # CPU since the previous sample: shows when other tenants crowded the machine.
            sample["cpu_pct"] = interval_meter.stop()
            interval_meter = CpuMeter(cpu_sessions).start()
            probe_latencies += sample.pop("probe_latencies_ms", [])
            _drain(ingest_q, ingest_msgs)
            _drain(serve_q, serve_msgs)
            samples.append(sample)
            _say_sample(sample, ingest_msgs, serve_msgs)
            dead = [name for name, sid in sessions.items() if not session_processes(sid)]
            if dead:
                exits += dead
                say(f"stack processes exited: {dead}; ending the run")
                break
            if final:
                break
            if not serve.is_alive() and serve.exitcode != 0:
                raise RuntimeError(f"serving load process failed (exit {serve.exitcode})")
            k += 1
        cpu = meter.stop()

        # Ingest stops now; every event sent must show up in the users' events_total.
        stop_ingest.set()
        _join_draining(ingest, ingest_q, ingest_msgs, 60.0)
        _drain(serve_q, serve_msgs)
        ingest_done = next((m for m in ingest_msgs if m["kind"] == "ingest_done"), None)
        if ingest_done is None:
            raise RuntimeError("the ingest process ended without its final stats")
        gen_users = ingest_done.pop("users")
        drain = _wait_features(settings, gen_users, ingest_done["sent"], args.drain_timeout)
        end_counts = _counters(urls, server_url)
        dlq_total = dlq_counter.count()
        offsets.stop()
        lag_samples = offsets.samples
    finally:
        stop_ingest.set()
        _stop_child(serve, "serving load")
        _stop_child(ingest, "ingest sender")
        if offsets is not None and offsets.is_alive():
            offsets.stop()
        if dlq_counter is not None:
            dlq_counter.close()

    serve_done = next((m for m in serve_msgs if m["kind"] == "serve_done"), {})
    log_errors = count_log_errors(settings)
    intervals = sorted((m for m in serve_msgs if m["kind"] == "serve"), key=lambda m: m["i"])
    memory = memory_verdict(samples, warmup_s, args.max_slope_mb_min)
    probes_sent = sum(s["probes"]["sent"] for s in samples)
    probes_lost = sum(s["probes"]["lost"] for s in samples)
    errors = {
        "recommend_errors": serve_done.get("error_count", -1),
        "recommend_unanswered": serve_done.get("lost", 0),
        "server_rpc_errors": end_counts.get("server_rpc_errors", 0),
        "ingest_delivery_errors": ingest_done["errors"],
        "ingest_undelivered": ingest_done["undelivered"],
        "dead_letters": dlq_total,
        "writer_write_errors": end_counts.get("writer_write_errors", 0),
        "writer_bad_records": end_counts.get("writer_bad_records", 0),
        "events_missing_from_features": ingest_done["sent"] - drain["events_total"],
        # Accepted by the job more often than sent: a replay after a job restart.
        "job_events_unexplained": end_counts.get("job_events", -1)
        - ingest_done["sent"]
        - drain["probe_user_events"],
        "freshness_probes_lost": probes_lost,
        "metrics_scrapes_failed": sum(1 for key in end_counts if key.endswith("_scrape_failed")),
        "stack_process_exits": len(exits),
        "log_errors": sum(log_errors.values()),
    }
    ok_answers = max(1, serve_done.get("ok", 0))
    degraded = {
        # Served (OK) but not personalized: Redis did not answer within its socket
        # timeout (50 ms), so the server answered with trending (by design).
        "store_unavailable_fallbacks": int(end_counts.get("store_unavailable_fallbacks", 0)),
        "fallbacks_all_reasons": int(end_counts.get("server_fallbacks", 0)),
        "fallbacks_by_reason": {
            key.partition(":")[2]: int(value)
            for key, value in end_counts.items()
            if key.startswith("fallbacks:")
        },
        "not_personalized_pct": round(
            100.0 * (1 - serve_done.get("personalized", 0) / ok_answers), 2
        ),
    }
    errors = {name: int(value) for name, value in errors.items()}
    error_count = sum(abs(v) for v in errors.values())
    not_flat = [m["process"] for m in memory if not m["flat"]]
    ok = error_count == 0 and not not_flat and bool(memory)
    reasons = []
    if error_count:
        reasons.append("errors: " + ", ".join(f"{k}={v}" for k, v in errors.items() if v))
    if not_flat:
        reasons.append("memory not flat: " + ", ".join(not_flat))
    if not memory:
        reasons.append("too few samples after the warm-up for a memory fit")
    verdict = {
        "pass": ok,
        "error_count": error_count,
        "max_slope_mb_per_min": args.max_slope_mb_min,
        "not_flat": not_flat,
        "line": (
            f"PASS: 0 errors, every process flat (RSS slope < {args.max_slope_mb_min:g} MB/min "
            f"after {warmup_s / 60:.1f} min warm-up)"
            if ok
            else "FAIL: " + "; ".join(reasons)
        ),
    }
    return {
        "parameters": {
            "minutes": args.minutes,
            "rate_ev_s": args.rate,
            "rps": args.rps,
            "warmup_s": warmup_s,
            "sample_interval_s": interval_s,
            "probe_seconds_per_sample": args.probe_seconds,
            "generator_users": args.gen_users,
            "generator_items": args.gen_items,
            "serve_delay_s": args.serve_delay,
            "k": args.k,
            "deadline_s": args.deadline,
            "channels": args.channels,
            "max_slope_mb_per_min": args.max_slope_mb_min,
            "flink": settings.flink.model_dump(),
        },
        "pipeline_ready_s": round(ready_s, 1),
        "verdict": verdict,
        "errors": errors,
        "log_errors": log_errors,
        "degraded": degraded,
        "ingest": ingest_done,
        "features": {
            **drain,
            "events_sent": ingest_done["sent"],
            "events_in_kafka_incl_probes": samples[-1].get("events_in_kafka") if samples else None,
            "job_events_accepted": end_counts.get("job_events", 0),
            "probe_user_events": drain.get("probe_user_events"),
        },
        "serving": serve_done,
        "freshness": {
            "probes_sent": probes_sent,
            "probes_lost": probes_lost,
            **latency_summary([x / 1000.0 for x in probe_latencies]),
        },
        "consumer_lag_msgs": _lag_summary(lag_samples),
        "memory": memory,
        "cpu_pct_of_a_core": cpu,
        "counters_at_end": end_counts,
        "samples": samples,
        "serving_intervals": intervals,
        "ingest_progress": [m for m in ingest_msgs if m["kind"] == "ingest"],
    }


def _lag_summary(lag_samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Writer lag (feature_updates not applied yet) and the job's lag (input events past
    its offsets committed on the last checkpoint), sampled once a second."""
    out: dict[str, Any] = {"samples": len(lag_samples)}
    for key, name in (("writer_lag", "writer"), ("flink_lag", "job_committed_on_checkpoint")):
        values = [s[key] for s in lag_samples]
        if values:
            out[name] = {
                "mean": round(sum(values) / len(values), 1),
                "p99": float(np.percentile(values, 99)),
                "max": max(values),
                "last": values[-1],
            }
    return out


def _sample(
    settings: Settings,
    sessions: dict[str, int],
    offsets: Any,
    dlq: TopicCounter,
    urls: dict[str, str],
    server_url: str,
    *,
    jstat: bool,
    probe_seconds: float,
) -> dict[str, Any]:

    from bench.freshness import probe_loop

    sample: dict[str, Any] = {"memory": memory_sample(sessions)}
    if jstat:
        heaps = {}
        for label, m in sample["memory"].items():
            if m["comm"] == "java":
                heap = jvm_heap(m["pid"])
                if heap:
                    heaps[label] = heap
        sample["jvm_heap"] = heaps
    if offsets.samples:
        o = offsets.samples[-1]  # at most a second old
        sample["lag"] = {"writer": o["writer_lag"], "flink_on_checkpoint": o["flink_lag"]}
        sample["events_in_kafka"] = o["events_high"]
    try:
        sample["dlq"] = dlq.count()
    except Exception as exc:
        sample["dlq_error"] = repr(exc)
    sample["counters"] = _counters(urls, server_url)
    try:
        # Not serving's 50 ms timeout: a slow answer here is a sample, not a failure.
        client = redis_client(settings.redis, request_path=False, timeout_s=10.0)
        info = cast(dict[str, Any], client.info("memory"))
        sample["redis"] = {"keys": client.dbsize(), "used_mb": round(info["used_memory"] / MB, 1)}
        client.close()
    except Exception as exc:
        sample["redis"] = {"error": repr(exc)}
    if probe_seconds > 0:
        p = probe_loop(settings, probe_seconds, 0.1, 10.0, 0.005)
        sample["probes"] = {
            "sent": p["probes_sent"],
            "seen": p["probes_seen"],
            "lost": p["probes_lost"],
            "p50_ms": p["freshness"].get("p50_ms"),
            "p99_ms": p["freshness"].get("p99_ms"),
            "max_ms": p["freshness"].get("max_ms"),
        }
        sample["probe_latencies_ms"] = p["latencies_ms"]
    else:
        sample["probes"] = {"sent": 0, "seen": 0, "lost": 0}
    return sample


def _counters(urls: dict[str, str], server_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    sources = {
        "job": urls.get(stack.FLINK_JOB.name),
        "writer": urls.get(stack.WRITER.name),
        "server": server_url,
    }
    scraped: dict[str, dict[str, float]] = {}
    for name, url in sources.items():
        if not url:
            continue
        try:
            scraped[name] = scrape(url)
        except Exception as exc:
            out[f"{name}_scrape_failed"] = 1.0
            say(f"metrics of {name} not readable: {exc!r}")
    job = scraped.get("job", {})
    writer = scraped.get("writer", {})
    server = scraped.get("server", {})
    if job:
        out["job_events"] = metric_sum(job, "pz_job_events_total")
        out["job_dead_letters"] = metric_sum(job, "pz_job_dead_letters_total")
        out["job_duplicates_dropped"] = metric_sum(job, "pz_job_duplicates_dropped_total")
    if writer:
        out["writer_rows_written"] = metric_sum(writer, "pz_writer_rows_written_total")
        out["writer_write_errors"] = metric_sum(writer, "pz_writer_write_errors_total")
        out["writer_bad_records"] = metric_sum(writer, "pz_writer_bad_records_total")
    if server:
        out["server_rpc_errors"] = metric_sum(server, "pz_serving_rpc_errors_total")
        out["store_unavailable_fallbacks"] = metric_sum(
            server, "pz_serving_fallbacks_total", reason="store_unavailable"
        )
        out["server_fallbacks"] = metric_sum(server, "pz_serving_fallbacks_total")
        for key, value in server.items():
            base, _, labels = key.partition("{")
            if base == "pz_serving_fallbacks_total" and labels.startswith("reason="):
                out[f"fallbacks:{labels[len('reason=') : -1]}"] = value
    return out


def _wait_features(
    settings: Settings, users: list[str], sent: int, timeout_s: float
) -> dict[str, Any]:
    """Poll the users' ``events_total`` until it covers every event sent."""
    from personalization.privacy import pseudonymizer
    from serving.online_features import UserFeatureReader

    t0 = time.monotonic()
    events_total = rows = 0
    while True:
        events_total, rows = events_in_features(settings, users)
        if events_total >= sent or time.monotonic() - t0 > timeout_s:
            break
        time.sleep(2.0)
    waited = time.monotonic() - t0
    reader = UserFeatureReader(settings)
    try:
        probe = reader.read(pseudonymizer(settings.privacy.hmac_secret)(stack.PROBE_USER))
    finally:
        reader.close()
    say(
        f"features: {events_total:,} of {sent:,} events sent are in the users' events_total "
        f"({rows:,} users, {waited:.1f}s after the load)"
    )
    return {
        "events_total": events_total,
        "users_with_rows": rows,
        "users_sent": len(users),
        "drain_wait_s": round(waited, 1),
        "probe_user_events": probe.events_total if probe else 0,
    }


def _say_sample(
    s: dict[str, Any], ingest_msgs: list[dict[str, Any]], serve_msgs: list[dict[str, Any]]
) -> None:
    by_component: dict[str, float] = {}
    for m in s["memory"].values():
        by_component[m["component"]] = by_component.get(m["component"], 0.0) + m["rss_mb"]
    rss = ", ".join(f"{c} {v:,.0f}" for c, v in by_component.items())
    ing = next((m for m in reversed(ingest_msgs) if m["kind"] == "ingest"), None)
    srv = next((m for m in reversed(serve_msgs) if m["kind"] == "serve"), None)
    lag = s.get("lag", {})
    p = s["probes"]
    parts = [f"t={s['t_s']:.0f}s"]
    if ing:
        parts.append(f"ingest {ing['interval_rate']:.0f} ev/s (sent {ing['sent']:,})")
    parts.append(f"lag writer {lag.get('writer')} job {lag.get('flink_on_checkpoint')}")
    if p.get("seen"):
        parts.append(f"fresh p50 {p['p50_ms']:.0f} p99 {p['p99_ms']:.0f} ms")
    if srv:
        lat = srv["latency"]
        parts.append(
            f"rec {srv['ok_rps']:.0f} rps p50 {lat.get('p50_ms', 0):.1f} "
            f"p99 {lat.get('p99_ms', 0):.1f} ms err {srv['error_count']}"
        )
    parts.append(f"dlq {s.get('dlq')}")
    parts.append(f"RSS MB: {rss}")
    say("; ".join(parts))


# --- report ------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    """The tables printed at the end of ``python -m bench soak``."""
    intervals = r.get("serving_intervals", [])
    components = sorted({m["component"] for s in r["samples"] for m in s["memory"].values()})
    rows = []
    prev_events: tuple[float, int] | None = None
    for s in r["samples"]:
        by_component = dict.fromkeys(components, 0.0)
        for m in s["memory"].values():
            by_component[m["component"]] += m["rss_mb"]
        events = s.get("events_in_kafka")
        rate = None
        if events is not None and prev_events is not None and s["t_s"] > prev_events[0]:
            rate = (events - prev_events[1]) / (s["t_s"] - prev_events[0])
        if events is not None:
            prev_events = (s["t_s"], events)
        # The serving interval that ended last before this sample.
        srv = next((m for m in reversed(intervals) if m["t_to_s"] <= s["t_s"] + 0.5), None)
        cpu = s.get("cpu_pct", {})
        lat = srv["latency"] if srv else {}
        p = s["probes"]
        lag = s.get("lag", {})
        rows.append(
            (
                f"{s['t_s']:.0f}",
                rate,
                lag.get("writer"),
                lag.get("flink_on_checkpoint"),
                p.get("p50_ms"),
                p.get("p99_ms"),
                srv["ok_rps"] if srv else None,
                lat.get("p50_ms"),
                lat.get("p99_ms"),
                srv["error_count"] if srv else None,
                s.get("dlq"),
                s.get("redis", {}).get("keys"),
                cpu.get("machine (all cores)"),
                cpu.get("others"),
                *(by_component[c] for c in components),
            )
        )
    timeline = format_table(
        [
            "t s",
            "ev/s in",
            "w.lag",
            "job lag",
            "fresh p50",
            "fresh p99",
            "rec rps",
            "rec p50",
            "rec p99",
            "rec err",
            "dlq",
            "redis keys",
            "cpu%",
            "others%",
            *(f"{c} MB" for c in components),
        ],
        rows,
    )
    mem_rows = [
        (
            m["process"],
            m["rss_start_mb"],
            m["rss_end_mb"],
            m["growth_mb"],
            m["growth_pct"],
            m["slope_mb_per_min"],
            m["anon_slope_mb_per_min"],
            "yes" if m["flat"] else "NO",
        )
        for m in r["memory"]
    ]
    warm = r["parameters"]["warmup_s"] / 60
    memory = format_table(
        [
            f"RSS after {warm:.1f} min warm-up -> end",
            "start MB",
            "end MB",
            "growth MB",
            "growth %",
            "slope MB/min",
            "anon MB/min",
            "flat",
        ],
        mem_rows,
    )
    heap_lines = []
    first_heap = next(
        (s.get("jvm_heap") for s in r["samples"] if s["t_s"] >= r["parameters"]["warmup_s"]), None
    )
    last_heap = r["samples"][-1].get("jvm_heap") if r["samples"] else None
    if first_heap and last_heap:
        for label, h0 in first_heap.items():
            h1 = last_heap.get(label)
            if h1:
                heap_lines.append(
                    (
                        label,
                        f"{h0['heap_committed_mb']:,.0f} -> {h1['heap_committed_mb']:,.0f}",
                        f"{h0['heap_used_mb']:,.0f} -> {h1['heap_used_mb']:,.0f}",
                        f"{h0['old_used_mb']:,.0f} -> {h1['old_used_mb']:,.0f}",
                        f"{h1['young_gcs'] - h0['young_gcs']:.0f} / "
                        f"{h1['full_gcs'] - h0['full_gcs']:.0f}",
                    )
                )
    heaps = (
        format_table(
            ["JVM heap (jstat), warm-up -> end", "committed MB", "used MB", "old MB", "GCs y/full"],
            heap_lines,
        )
        if heap_lines
        else ""
    )
    f = r["features"]
    sv = r.get("serving", {})
    lat = sv.get("latency", {})
    fr = r["freshness"]
    ing = r["ingest"]
    totals = format_table(
        ["totals", "value"],
        [
            (
                "events sent (delivered, errors)",
                f"{ing['sent']:,} ({ing['delivered']:,}, {ing['errors']})",
            ),
            ("ingest achieved ev/s", ing["achieved_rate"]),
            (
                "events in features (sum events_total)",
                f"{f['events_total']:,} of {f['users_sent']:,} users",
            ),
            ("drain after the load (s)", f["drain_wait_s"]),
            ("job accepted events (metric; incl. probes)", f.get("job_events_accepted")),
            ("probe events in features", f.get("probe_user_events")),
            ("dead letters", r["errors"]["dead_letters"]),
            ("Recommend sent / ok", f"{sv.get('sent', 0):,} / {sv.get('ok', 0):,}"),
            ("Recommend ok RPS", sv.get("achieved_rps")),
            (
                "Recommend personalized",
                f"{100.0 * sv.get('personalized', 0) / max(1, sv.get('ok', 0)):.1f} %",
            ),
            (
                "  not personalized: Redis slower than 50 ms",
                r["degraded"]["store_unavailable_fallbacks"],
            ),
            (
                "  fallbacks by reason",
                ", ".join(
                    f"{k} {v:,}" for k, v in r["degraded"].get("fallbacks_by_reason", {}).items()
                )
                or None,
            ),
            ("Recommend users asked for (pool at end)", sv.get("users_asked_for_at_end")),
            (
                "Recommend p50 / p99 / max ms",
                f"{lat.get('p50_ms')} / {lat.get('p99_ms')} / {lat.get('max_ms')}",
            ),
            ("freshness probes sent / lost", f"{fr['probes_sent']} / {fr['probes_lost']}"),
            (
                "freshness p50 / p99 / max ms",
                f"{fr.get('p50_ms')} / {fr.get('p99_ms')} / {fr.get('max_ms')}",
            ),
            *((f"cpu % of a core: {k}", v) for k, v in r["cpu_pct_of_a_core"].items()),
        ],
    )
    errors = format_table(["errors (all must be 0)", "count"], list(r["errors"].items()))
    parts = [timeline, memory, heaps, totals, errors, r["verdict"]["line"]]
    return "\n\n".join(p for p in parts if p)
