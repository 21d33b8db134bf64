"""The baseline: the trivial keyed job of ARCHITECTURE.md on the same backlog."""

from __future__ import annotations

import math
import time
from typing import Any

from bench.env import (
    say,
)
from ops import stack
from personalization.settings import Settings

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


def run_baseline(
    settings: Settings, n: int, args: Any, *, on_cluster: bool = False
) -> dict[str, Any]:
    """Events/s of bench/trivial_job.py over the same steady window of the same backlog,
    at ``settings.flink.parallelism``: in its own MiniCluster, or (``on_cluster``)
    submitted to the local standalone cluster the real job ran on."""
    from bench import trivial_job

    where = "on the cluster" if on_cluster else "in a MiniCluster"
    say(
        f"baseline: the trivial keyed job (bench/trivial_job.py) on the same backlog, "
        f"parallelism {settings.flink.parallelism} {where}"
    )
    lo = math.ceil(n * args.warmup_fraction)
    hi = math.floor(n * (1.0 - args.tail_fraction))
    _create_topic(settings, trivial_job.OUTPUT_TOPIC)
    if on_cluster:
        return _on_cluster(settings, n, args, lo, hi)
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
    return _figures({"pid": pid}, seen, lo, hi)


def _figures(
    out: dict[str, Any], seen: list[tuple[float, int]], lo: int, hi: int
) -> dict[str, Any]:
    start = next((s for s in seen if s[1] >= lo), None)
    end = next((s for s in seen if s[1] >= hi), None)
    out["records"] = seen[-1][1] if seen else 0
    first = next((s for s in seen if s[1] > 0), None)
    out["first_record_s"] = round(first[0], 1) if first else None
    if start and end and end[0] > start[0]:
        out["steady_events_per_s"] = round((end[1] - start[1]) / (end[0] - start[0]))
    say(f"baseline: {out.get('steady_events_per_s')} events/s steady")
    return out


def _on_cluster(settings: Settings, n: int, args: Any, lo: int, hi: int) -> dict[str, Any]:
    """The trivial job submitted to the running cluster; timed from the submission."""
    from bench import trivial_job
    from bench.ingest.cluster import ClusterJob

    job = ClusterJob(settings, trivial_job.__name__)
    launched = time.monotonic()
    seen: list[tuple[float, int]] = []
    try:
        job.submit()
        deadline = launched + args.timeout
        while time.monotonic() < deadline:
            count = _output_records(settings, trivial_job.OUTPUT_TOPIC)
            if count >= 0:
                seen.append((time.monotonic() - launched, count))
            if count >= n:
                break
            job.check_running()
            time.sleep(0.1)
        parallelism = job.vertex_parallelism()
    finally:
        job.cancel()
    return _figures(
        {"job_id": job.job_id, "parallelism": settings.flink.parallelism, "vertices": parallelism},
        seen,
        lo,
        hi,
    )
