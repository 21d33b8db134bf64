"""What the soak records about the stack while it runs: the memory of every process (RSS
and JVM heap), consumer lag, dead letters, Redis, the components' counters and logs,
and, at the end, whether every event sent reached the features."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from typing import Any, cast

from bench.env import (
    BENCH_SERVER,
    metric_sum,
    proc_status_kb,
    say,
    scrape,
    session_processes,
)
from ops import stack
from personalization.redis_client import redis_client
from personalization.settings import Settings

MB = 1024 * 1024
# Where the scenario puts -XX:+AlwaysPreTouch for the stack's JVMs; jstat's own JVM is
# started without it.
JAVA_TOOL_OPTIONS = "JAVA_TOOL_OPTIONS"


# --- memory ------------------------------------------------------------------------------


def memory_sample(sessions: dict[str, int]) -> dict[str, dict[str, Any]]:
    """label -> {pid, component, comm, rss_mb, anon_mb} for every process of the stack."""
    out: dict[str, dict[str, Any]] = {}
    for component, sid in sessions.items():
        for pid, comm in session_processes(sid):
            kb = proc_status_kb(pid)
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


def counters(urls: dict[str, str], server_url: str) -> dict[str, float]:
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


# --- one sample --------------------------------------------------------------------------


def take_sample(
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
    sample["counters"] = counters(urls, server_url)
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


def wait_features(
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


def say_sample(
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
