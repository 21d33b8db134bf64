"""The soak run: starts the pipeline and the two load processes, samples the stack every
``--sample-interval`` seconds for ``--minutes``, drains, and puts the results together
(see :mod:`bench.soak` for what is measured and why)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from typing import Any

from bench.env import (
    BENCH_SERVER,
    BenchStack,
    CpuMeter,
    drain_queue,
    join_draining,
    say,
    session_processes,
)
from bench.soak.load import ServeLoad, ingest_main, serve_main
from bench.soak.sampling import (
    JAVA_TOOL_OPTIONS,
    TopicCounter,
    count_log_errors,
    counters,
    say_sample,
    take_sample,
    wait_features,
)
from bench.soak.verdict import count_errors, degraded, lag_summary, memory_verdict, verdict
from bench.stats import latency_summary
from ops import stack
from traffic.generator import GeneratorConfig

__all__ = ["add_arguments", "run_soak"]

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


def _wait_message(
    proc: Any, q: Any, into: list[dict[str, Any]], kind: str, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        drain_queue(q, into)
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
    from bench.freshness import OffsetSampler, start_pipeline
    from bench.serving import target, wait_catalog

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
            target=ingest_main,
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
            "redis": bench.service_pid("redis") or 0,
            "kafka": bench.service_pid("kafka") or 0,
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
        serve = ctx.Process(target=serve_main, args=(load, serve_q), daemon=True)
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
                join_draining(serve, serve_q, serve_msgs, args.deadline + 30.0)
            else:
                time.sleep(max(0.0, t0 + k * interval_s - time.monotonic()))
            t_s = time.monotonic() - t0
            sample = take_sample(
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
            drain_queue(ingest_q, ingest_msgs)
            drain_queue(serve_q, serve_msgs)
            samples.append(sample)
            say_sample(sample, ingest_msgs, serve_msgs)
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
        join_draining(ingest, ingest_q, ingest_msgs, 60.0)
        drain_queue(serve_q, serve_msgs)
        ingest_done = next((m for m in ingest_msgs if m["kind"] == "ingest_done"), None)
        if ingest_done is None:
            raise RuntimeError("the ingest process ended without its final stats")
        gen_users = ingest_done.pop("users")
        drain = wait_features(settings, gen_users, ingest_done["sent"], args.drain_timeout)
        end_counts = counters(urls, server_url)
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
    errors = count_errors(
        serve_done=serve_done,
        ingest_done=ingest_done,
        end_counts=end_counts,
        drain=drain,
        dlq_total=dlq_total,
        probes_lost=probes_lost,
        exits=exits,
        log_errors=log_errors,
    )
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
        "verdict": verdict(errors, memory, args.max_slope_mb_min, warmup_s),
        "errors": errors,
        "log_errors": log_errors,
        "degraded": degraded(serve_done, end_counts),
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
        "consumer_lag_msgs": lag_summary(lag_samples),
        "memory": memory,
        "cpu_pct_of_a_core": cpu,
        "counters_at_end": end_counts,
        "samples": samples,
        "serving_intervals": intervals,
        "ingest_progress": [m for m in ingest_msgs if m["kind"] == "ingest"],
    }
