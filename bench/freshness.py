"""Scenario ``freshness``: event-to-feature latency of the write path under load.

With Kafka, the Flink job (MiniCluster, thread mode) and the online-store writer running,
a background process sends the built-in generator's shopping sessions at ``rate``
events/s through :class:`~traffic.TrafficSender` (event times stamped
at send). Meanwhile the driver produces a probe event for a dedicated probe user every
``probe_interval_s`` and polls that user's row in Redis: a probe's freshness is the wall
time from its ``produce`` call until a row whose ``last_seen_ms`` covers the probe's event
time is readable. That is the whole write path: producer, broker, Flink source, parse,
keyed state, Kafka sink, writer, Redis. The poll reads only that feature of the row (one
HMGET of one field, :class:`ProbeRowReader`): the writer stores a row with one HSET, so
the field is readable exactly when the row is, and decoding the whole row as serving does
500 times a second took ~5 % of a core from the machine the pipeline runs on.

Each phase first sends its load for ``--freshness-warmup`` seconds (45) unprobed: for
their first minute the JVMs compile (C2 took 40 % of the job's CPU 50 s after start),
and a 5 s warm-up measured that start-up, not the pipeline (1,000 events/s, same code:
p99 2.0-3.0 s after 5 s, 0.37 s after 45 s).

Probes overlap (one every 100 ms, each may take longer), so completion is detected by
polling every ``poll_interval_s``; the figures carry that resolution (~2 ms).
A sampler reads the Flink job's and the writer's committed Kafka offsets every second:
consumer lag in messages and the rates each stage achieved.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing as mp
import os
import threading
import time
import uuid
from collections import deque
from typing import Any

from bench.env import BenchStack, CpuMeter, say
from bench.job_placement import job_sessions, start_job, stop_cluster
from bench.stats import latency_summary
from feature_repo.names import USER_PROFILE
from ops import stack
from personalization.feature_store import decode_fields, field_key, redis_key
from personalization.privacy import pseudonymizer
from personalization.redis_client import redis_client
from personalization.settings import Settings, settings_from_json

# --- background load (its own process) -------------------------------------------------


def _send_background(
    settings_json: str,
    rate: float,
    duration_s: float,
    n_users: int,
    seed: int,
    id_prefix: str,
    out: Any,
) -> None:
    os.setsid()  # own session: CPU accounting by session id
    from traffic import GeneratorConfig, TrafficGenerator, TrafficSender

    settings = settings_from_json(settings_json)
    generator = TrafficGenerator(GeneratorConfig(seed=seed, n_users=n_users, id_prefix=id_prefix))
    sender = TrafficSender(
        settings,
        rate=rate,
        rewrite_time_to_now=True,
        speed=math.inf,  # every event stamped with its send time
        max_duration_s=duration_s,
    )
    stats = sender.send(generator.events())
    out.put(
        {
            "sent": stats.sent,
            "delivered": stats.delivered,
            "errors": stats.errors,
            "undelivered": stats.undelivered,
            "elapsed_s": round(stats.elapsed_s, 2),
            "achieved_rate": round(stats.rate, 1),
            "first_error": stats.first_error,
            "per_topic": dict(stats.per_topic),
        }
    )


# --- Kafka offsets ---------------------------------------------------------------------


class OffsetSampler(threading.Thread):
    """Samples committed offsets of the Flink job and the writer once a second."""

    def __init__(self, settings: Settings, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="offset-sampler")
        from confluent_kafka import Consumer, TopicPartition

        k = settings.kafka
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self.error = ""
        self._stop_event = threading.Event()

        def consumer(group: str) -> Any:
            return Consumer(
                {
                    "bootstrap.servers": k.bootstrap_servers,
                    "group.id": group,  # never subscribes: reads the group's commits only
                    "enable.auto.commit": False,
                }
            )

        self._writer = consumer(k.writer_consumer_group)
        self._flink = consumer(k.flink_consumer_group)
        meta = self._writer.list_topics(timeout=10)

        def partitions(topic: str) -> list[Any]:
            return [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]

        self._updates_tps = partitions(k.feature_updates_topic)
        self._event_tps = [tp for t in k.event_topics for tp in partitions(t)]

    def _totals(self, consumer: Any, tps: list[Any]) -> tuple[int, int]:
        """(sum of high watermarks, sum of committed offsets) over ``tps``."""
        high = committed = 0
        for tp in consumer.committed(tps, timeout=5):
            _low, hi = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            high += hi
            committed += max(tp.offset, 0)
        return high, committed

    def sample(self) -> dict[str, Any]:
        t = time.monotonic()
        fu_high, writer_committed = self._totals(self._writer, self._updates_tps)
        ev_high, flink_committed = self._totals(self._flink, self._event_tps)
        return {
            "t": t,
            "feature_updates_high": fu_high,
            "writer_committed": writer_committed,
            "writer_lag": fu_high - writer_committed,
            "events_high": ev_high,
            "flink_committed": flink_committed,
            "flink_lag": ev_high - flink_committed,
        }

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a sample may time out; keep going
                self.error = repr(exc)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)
        self._writer.close()
        self._flink.close()


def _rates(samples: list[dict[str, Any]], t_from: float, t_to: float) -> dict[str, Any]:
    window = [s for s in samples if t_from <= s["t"] <= t_to]
    if len(window) < 2:
        return {}
    a, b = window[0], window[-1]
    dt = b["t"] - a["t"]
    writer_lags = [s["writer_lag"] for s in window]
    flink_lags = [s["flink_lag"] for s in window]
    return {
        "window_s": round(dt, 1),
        "events_into_kafka_per_s": round((b["events_high"] - a["events_high"]) / dt, 1),
        "flink_consumed_per_s": round((b["flink_committed"] - a["flink_committed"]) / dt, 1),
        "feature_updates_emitted_per_s": round(
            (b["feature_updates_high"] - a["feature_updates_high"]) / dt, 1
        ),
        "writer_applied_per_s": round((b["writer_committed"] - a["writer_committed"]) / dt, 1),
        "writer_lag_msgs": {
            "mean": round(sum(writer_lags) / len(writer_lags), 1),
            "max": max(writer_lags),
            "last": writer_lags[-1],
        },
        "flink_lag_msgs_committed_on_checkpoint": {
            "mean": round(sum(flink_lags) / len(flink_lags), 1),
            "max": max(flink_lags),
            "last": flink_lags[-1],
        },
        "samples": len(window),
    }


# --- probes ----------------------------------------------------------------------------


class ProbeRowReader:
    """``last_seen_ms`` of one user's ``user_profile`` row in Feast's Redis layout (one
    field of the hash serving reads), None while the user has no row."""

    def __init__(self, settings: Settings, user_id: str) -> None:
        self.client = redis_client(settings.redis)
        self.key = redis_key(settings.feast.project, USER_PROFILE, user_id)
        self.field = field_key(USER_PROFILE, "last_seen_ms")

    def last_seen_ms(self) -> int | None:
        (raw,) = self.client.execute_command("HMGET", self.key, self.field)
        value = decode_fields(USER_PROFILE, ("last_seen_ms",), (raw,)).get("last_seen_ms")
        return int(value) if value is not None else None

    def close(self) -> None:
        self.client.close()


def probe_loop(
    settings: Settings,
    duration_s: float,
    interval_s: float,
    timeout_s: float,
    poll_interval_s: float,
) -> dict[str, Any]:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 0, "acks": "all"}
    )
    topic = settings.kafka.clickstream_topic
    key = stack.PROBE_USER.encode()
    # Stored under its pseudonym when a secret is configured (privacy.hmac_secret).
    reader = ProbeRowReader(settings, pseudonymizer(settings.privacy.hmac_secret)(stack.PROBE_USER))
    outstanding: deque[tuple[int, float]] = deque()  # (event_time_ms, produced at)
    latencies: list[float] = []
    seen_sent_ms: list[int] = []  # when each seen probe was sent (its event time)
    lost = 0
    read_errors = 0
    sent = 0
    last_event_ms = 0
    start = time.monotonic()
    end = start + duration_s
    next_probe = start
    while True:
        now = time.monotonic()
        if now >= end and (not outstanding or now >= end + timeout_s):
            break
        if now >= next_probe and now < end:
            event_ms = max(int(time.time() * 1000), last_event_ms + 1)
            last_event_ms = event_ms
            payload = json.dumps(stack.probe_event(event_ms)).encode()
            produced_at = time.monotonic()
            producer.produce(topic, payload, key)
            producer.poll(0)
            outstanding.append((event_ms, produced_at))
            sent += 1
            next_probe += interval_s
            if next_probe < now:  # never burst to catch up after a stall
                next_probe = now + interval_s
        try:
            last_seen_ms = reader.last_seen_ms()
        except Exception:
            last_seen_ms = None
            read_errors += 1
        seen_at = time.monotonic()
        if last_seen_ms is not None:
            while outstanding and outstanding[0][0] <= last_seen_ms:
                sent_ms, produced_at = outstanding.popleft()
                latencies.append(seen_at - produced_at)
                seen_sent_ms.append(sent_ms)
        while outstanding and seen_at - outstanding[0][1] > timeout_s:
            outstanding.popleft()
            lost += 1
        producer.poll(0)
        time.sleep(poll_interval_s)
    lost += len(outstanding)
    producer.flush(5)
    del producer
    reader.close()
    summary = latency_summary(latencies)
    return {
        "probes_sent": sent,
        "probes_seen": len(latencies),
        "probes_lost": lost,
        "read_errors": read_errors,
        "freshness": summary,
        # In probe order: shows whether slow probes cluster (e.g. around checkpoints).
        "latencies_ms": [round(x * 1000, 1) for x in latencies],
        # Wall clock (epoch ms) each of them was sent at: slow probes lined up with the
        # job's checkpoints or the writer's flushes in the logs (--keep-run-dir).
        "sent_at_ms": seen_sent_ms,
    }


# --- scenario --------------------------------------------------------------------------


def start_pipeline(bench: BenchStack) -> float:
    bench.start_redis()
    bench.start_kafka()
    bench.feast_apply()
    t0 = time.monotonic()
    start_job(bench)
    bench.start_component(stack.WRITER)
    say("waiting for the pipeline to deliver a probe (Flink job start ~10-60 s)")
    first = stack.wait_pipeline_ready(bench.settings, timeout_s=240)
    ready_s = time.monotonic() - t0
    say(f"pipeline ready after {ready_s:.1f}s (first probe {first * 1000:.0f} ms)")
    return ready_s


def run_freshness(bench: BenchStack, args: Any) -> dict[str, Any]:
    """One load phase per rate of ``--rate`` (e.g. ``--rate 1000 2000``) on one pipeline,
    in the order given; before each phase after the first, the backlog of the previous
    one drains, so each rate starts from a caught-up job."""
    rates = args.rate if isinstance(args.rate, list) else [args.rate]
    bench.settings = stack.with_job_layout(
        bench.settings, separate_item_side=getattr(args, "separate_item_side", False)
    )
    try:
        ready_s = start_pipeline(bench)
        runs = []
        for i, rate in enumerate(rates):
            if i:
                wait_drained(bench.settings, rates[i - 1])
            say(f"--- freshness at {rate:g} ev/s ---")
            runs.append(_run_rate(bench, args, rate))
    finally:
        stop_cluster(bench.settings)
    return {
        "pipeline_ready_s": round(ready_s, 1),
        "job_runs_on": stack.job_layout(bench.settings),
        "runs": runs,
    }


def wait_drained(settings: Settings, rate: float, timeout_s: float = 180.0) -> None:
    """Until the job's committed offsets are within ~3 s of input (it commits on each
    checkpoint) and the writer's within 1,000 rows, or ``timeout_s``."""
    sampler = OffsetSampler(settings)
    sampler.start()
    t0 = time.monotonic()
    try:
        while True:
            time.sleep(1.0)
            s = sampler.samples[-1] if sampler.samples else None
            if s and s["flink_lag"] <= 3 * rate and s["writer_lag"] <= 1000:
                say(f"drained in {time.monotonic() - t0:.0f}s: {s}")
                return
            if time.monotonic() - t0 > timeout_s:
                say(f"not drained after {timeout_s:.0f}s, going on: {s}")
                return
    finally:
        sampler.stop()


def _run_rate(bench: BenchStack, args: Any, rate: float) -> dict[str, Any]:
    settings = bench.settings
    sampler = OffsetSampler(settings)
    sampler.start()

    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    send_duration = args.freshness_warmup + args.duration
    sender = ctx.Process(
        target=_send_background,
        args=(
            settings.model_dump_json(),
            rate,
            send_duration,
            args.gen_users,
            args.seed,
            f"bench-{uuid.uuid4().hex[:8]}",
            out,
        ),
        daemon=True,
    )
    sender.start()
    say(
        f"background load: {rate:g} ev/s for {send_duration:g}s "
        f"(generator, {args.gen_users:,} users); probes start after "
        f"{args.freshness_warmup:g}s warm-up"
    )
    try:
        time.sleep(args.freshness_warmup)
        sessions = {
            **job_sessions(bench),
            "online-store-writer": bench.component_pid(stack.WRITER) or 0,
            "kafka": bench.service_pid("kafka") or 0,
            "redis": bench.service_pid("redis") or 0,
            "traffic sender": sender.pid or 0,
        }
        meter = CpuMeter(sessions).start()
        t_from = time.monotonic()
        probes = probe_loop(
            settings,
            args.duration,
            args.probe_interval,
            args.probe_timeout,
            args.poll_interval,
        )
        t_to = time.monotonic()
        cpu = meter.stop()
        send_stats = out.get(timeout=send_duration + 60)
        sender.join(timeout=30)
    finally:
        if sender.is_alive():
            sender.terminate()
        sampler.stop()
    gc.collect()  # drop idle Kafka clients before the broker goes away (quiet logs)
    pipeline = _rates(sampler.samples, t_from, min(t_to, t_from + args.duration))
    if sampler.error:
        pipeline["sampler_error"] = sampler.error
    f = probes["freshness"]
    if f.get("count"):
        say(
            f"freshness: {f['count']} probes, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, "
            f"max {f['max_ms']:.1f} ms, lost {probes['probes_lost']}"
        )
    say(f"sender: {send_stats}")
    say(f"pipeline: {pipeline}")
    say(f"cpu % of one core: {cpu}")
    return {
        "parameters": {
            "rate_ev_s": rate,
            "duration_s": args.duration,
            "warmup_s": args.freshness_warmup,
            "probe_interval_s": args.probe_interval,
            "probe_timeout_s": args.probe_timeout,
            "poll_interval_s": args.poll_interval,
            "generator_users": args.gen_users,
            "flink": settings.flink.model_dump(),
            "kafka_partitions": settings.kafka.partitions,
        },
        **probes,
        "sender": send_stats,
        "pipeline": pipeline,
        "cpu_pct": cpu,
    }
