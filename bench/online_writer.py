"""Scenario ``writer``: rows/s the online-store writer applies on one core.

    python -m bench writer [--events 30000] [--dataset movielens|taobao|PATH] [--no-profile]

1. Realistic rows: the first ``--events`` events of a dataset (MovieLens 100K by
   default, in time order, shifted to end now; :func:`bench.ingest.backlog.load_backlog`)
   run through the job's own steps in process (:class:`flink_jobs.local.LocalPipeline`),
   and the feature rows they produce are grouped into changelog records as the job's
   operators group them: one record of the user step's rows per event, one of the item
   step's (its row, plus its CF row when it learned). Nothing is synthetic: these are
   the rows the job would put on ``feature_updates`` for that replay.
2. On a private stack (Redis single node, Kafka), the records are produced to the
   ``feature_updates`` topic before the writer starts.
3. The writer's consumer loop (:func:`writer.process.run_writer`, what ``python -m
   writer`` runs, with its default batch size) drains the topic in a child process pinned
   to one CPU (``sched_setaffinity``), against Redis. The rate is measured between its
   first and last batch (the consumer group join before it is not the writer's work):
   rows consumed per second (``rows_in``) and rows written to Redis per second (after
   the writer's per-batch coalescing, ``rows_written``); CPU µs per consumed row from the
   process's own CPU time over the same span (Python and librdkafka's threads).
4. Unless ``--no-profile``: Redis is emptied, and the same drain runs again under
   cProfile with a fresh consumer group; the costliest functions are listed.
"""

from __future__ import annotations

import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import resource
import threading
import time
from typing import Any

from bench.env import BenchStack, format_table, say
from personalization.settings import Settings, settings_from_json

__all__ = ["add_arguments", "report", "run_writer_bench"]

TARGET_ROWS_PER_S = 20_000


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("writer")
    g.add_argument("--events", type=int, default=30_000, help="dataset events replayed")
    g.add_argument(
        "--dataset",
        default="movielens",
        help="movielens (MovieLens 100K ratings), taobao (UserBehavior sample) or a path",
    )
    g.add_argument("--cpu", type=int, default=None, help="CPU to pin the writer to (default: last)")
    g.add_argument("--no-profile", action="store_true", help="skip the cProfile pass")
    g.add_argument("--profile-top", type=int, default=25, help="functions listed")
    g.add_argument("--timeout", type=float, default=600.0, help="give up a pass after (s)")


# --- rows ------------------------------------------------------------------------------


def build_records(settings: Settings, events: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The changelog records the job would emit for ``events`` (and their row count)."""
    from flink_jobs.local import LocalPipeline
    from personalization.feature_updates import FeatureUpdate, encode_record

    records: list[str] = []
    pending: list[FeatureUpdate] = []

    def flush() -> None:
        if pending:
            records.append(encode_record(pending))
            pending.clear()

    class RecordingPipeline(LocalPipeline):
        # The user step's rows are emitted before the item step starts; the item step's
        # rows form a record of their own (flink_jobs/operators.py emits them so).
        def _emit(self, row: FeatureUpdate) -> None:
            pending.append(row)

        def item_event(self, record: Any) -> None:
            flush()
            super().item_event(record)
            flush()

    pipeline = RecordingPipeline(settings, keep_rows=False)
    for event in events:
        pipeline.send(json.dumps(event))
        flush()
    rows = sum(r.count("\n") + 1 for r in records)
    return records, rows


def produce(settings: Settings, records: list[str]) -> dict[str, Any]:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "compression.type": "none",
        }
    )
    topic = settings.kafka.feature_updates_topic
    t0 = time.monotonic()
    for record in records:
        while True:
            try:
                producer.produce(topic, record.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not delivered to {topic}")
    return {"records": len(records), "elapsed_s": round(time.monotonic() - t0, 2)}


# --- one drain (child process) --------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _drain(settings_json: str, rows: int, cpu: int, profile_top: int, out: Any) -> None:
    """Run the writer until it consumed ``rows`` rows; timings (and a profile) on ``out``."""
    os.sched_setaffinity(0, {cpu})
    from writer.process import WriterStats, run_writer

    settings = settings_from_json(settings_json)
    stop = threading.Event()
    marks: list[tuple[float, float, int, int]] = []  # (wall, cpu, rows_in, rows_written)
    first_batch = 0

    def on_batch(stats: WriterStats) -> None:
        nonlocal first_batch
        if not marks:
            first_batch = stats.rows_in
        marks.append((time.monotonic(), _cpu_s(), stats.rows_in, stats.rows_written))
        if stats.rows_in >= rows:
            stop.set()

    profiler = cProfile.Profile() if profile_top else None
    t0 = time.monotonic()
    if profiler is not None:
        profiler.enable()
    stats = run_writer(settings, stop, on_batch=on_batch, settle=True)  # as python -m writer
    if profiler is not None:
        profiler.disable()
    result: dict[str, Any] = {
        "rows_in": stats.rows_in,
        "rows_written": stats.rows_written,
        "batches": stats.batches,
        "bad_records": stats.bad_records,
        "write_errors": stats.write_errors,
        "wall_s": round(time.monotonic() - t0, 2),
    }
    if len(marks) >= 2:
        (w0, c0, in0, wr0), (w1, c1, in1, wr1) = marks[0], marks[-1]
        span = max(1e-9, w1 - w0)
        # The span runs from the end of the first batch: its rows are not in it.
        result.update(
            measured_span_s=round(span, 3),
            rows_in_per_s=round((in1 - in0) / span),
            rows_written_per_s=round((wr1 - wr0) / span),
            cpu_us_per_row_in=round((c1 - c0) / max(1, in1 - in0) * 1e6, 1),
            cpu_us_per_row_written=round((c1 - c0) / max(1, wr1 - wr0) * 1e6, 1),
            cpu_pct_of_a_core=round(100 * (c1 - c0) / span, 1),
            first_batch_rows=first_batch,
        )
    if profiler is not None:
        buf = io.StringIO()
        ps = pstats.Stats(profiler, stream=buf).strip_dirs()
        ps.sort_stats("tottime").print_stats(profile_top)
        ps.sort_stats("cumulative").print_stats(profile_top)
        result["profile_text"] = buf.getvalue()
        result["profile_total_s"] = round(sum(v[2] for v in ps.stats.values()), 2)  # type: ignore[attr-defined]
    out.put(result)


def _run_drain(settings: Settings, rows: int, cpu: int, profile_top: int, timeout_s: float) -> Any:
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    proc = ctx.Process(
        target=_drain, args=(settings.model_dump_json(), rows, cpu, profile_top, out), daemon=True
    )
    proc.start()
    try:
        result = out.get(timeout=timeout_s)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
    return result


# --- scenario ------------------------------------------------------------------------------


def run_writer_bench(bench: BenchStack, args: Any) -> dict[str, Any]:
    from bench.ingest.backlog import load_backlog
    from personalization.redis_client import redis_client

    settings = bench.settings
    events, dataset = load_backlog(args.dataset, args.events, settings, int(time.time() * 1000))
    say(f"replaying {len(events):,} events of {dataset['path']} through the job's steps")
    t0 = time.monotonic()
    records, rows = build_records(settings, events)
    say(f"{rows:,} feature rows in {len(records):,} records ({time.monotonic() - t0:.1f}s)")

    bench.start_redis()
    bench.start_kafka()
    bench.feast_apply()
    preload = produce(settings, records)
    say(f"preloaded {preload['records']:,} records in {preload['elapsed_s']}s")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))

    say(f"writer: draining {rows:,} rows on CPU {cpu}")
    measured = _run_drain(settings, rows, cpu, 0, args.timeout)
    say(
        f"writer: {measured.get('rows_in_per_s')} rows/s consumed, "
        f"{measured.get('rows_written_per_s')} rows/s written, "
        f"{measured.get('cpu_us_per_row_in')} µs CPU per row"
    )
    result: dict[str, Any] = {
        "parameters": {
            "events": len(events),
            "dataset": args.dataset,
            "cpu": cpu,
            "writer": "writer.process.run_writer (default batch size), Redis single node",
            "history": settings.model_dump().get("history"),
        },
        "dataset": dataset,
        "rows": rows,
        "records": len(records),
        "preload": preload,
        "measured": measured,
        "target_rows_per_s": TARGET_ROWS_PER_S,
    }
    if not args.no_profile:
        client = redis_client(settings.redis, request_path=False)
        client.flushdb()
        client.close()
        kafka = settings.kafka.model_copy(
            update={"writer_consumer_group": f"{settings.kafka.writer_consumer_group}-profile"}
        )
        say("writer: the same drain again under cProfile (Redis emptied, new consumer group)")
        profiled = _run_drain(
            settings.model_copy(update={"kafka": kafka}), rows, cpu, args.profile_top, args.timeout
        )
        result["profiled"] = profiled
    return result


def report(r: dict[str, Any]) -> str:
    m = r["measured"]
    rows = [
        ("rows on the topic (records)", f"{r['rows']:,} ({r['records']:,})"),
        ("rows consumed /s (first -> last batch)", m.get("rows_in_per_s")),
        ("rows written to Redis /s (after coalescing)", m.get("rows_written_per_s")),
        ("CPU µs per consumed row", m.get("cpu_us_per_row_in")),
        ("CPU µs per written row", m.get("cpu_us_per_row_written")),
        ("writer CPU, % of a core", m.get("cpu_pct_of_a_core")),
        ("batches", m.get("batches")),
        ("target (rows/s)", f"{r['target_rows_per_s']:,}"),
    ]
    out = format_table([f"online-store writer, CPU {r['parameters']['cpu']}", ""], rows)
    prof = r.get("profiled", {})
    if prof.get("profile_text"):
        out += (
            f"\n\nunder cProfile: {prof.get('rows_in_per_s')} rows/s consumed "
            f"(profiling overhead included)\n{prof['profile_text']}"
        )
    return out
