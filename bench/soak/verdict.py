"""The soak's judgement: a line fitted to each process's RSS after the warm-up, the error
counts that must all be zero, what counts as degraded (not an error), pass or fail."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["count_errors", "degraded", "fit_slope", "lag_summary", "memory_verdict", "verdict"]


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


def lag_summary(lag_samples: list[dict[str, Any]]) -> dict[str, Any]:
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


def count_errors(
    *,
    serve_done: dict[str, Any],
    ingest_done: dict[str, Any],
    end_counts: dict[str, float],
    drain: dict[str, Any],
    dlq_total: int,
    probes_lost: int,
    exits: list[str],
    log_errors: dict[str, int],
) -> dict[str, int]:
    """Everything that counts as an error, by name; a pass needs every one at 0."""
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
    return {name: int(value) for name, value in errors.items()}


def degraded(serve_done: dict[str, Any], end_counts: dict[str, float]) -> dict[str, Any]:
    """Answers served with a fallback: reported, not errors."""
    ok_answers = max(1, serve_done.get("ok", 0))
    return {
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


def verdict(
    errors: dict[str, int], memory: list[dict[str, Any]], max_slope: float, warmup_s: float
) -> dict[str, Any]:
    """Pass: no error and every process's memory flat (and enough samples to tell)."""
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
    return {
        "pass": ok,
        "error_count": error_count,
        "max_slope_mb_per_min": max_slope,
        "not_flat": not_flat,
        "line": (
            f"PASS: 0 errors, every process flat (RSS slope < {max_slope:g} MB/min "
            f"after {warmup_s / 60:.1f} min warm-up)"
            if ok
            else "FAIL: " + "; ".join(reasons)
        ),
    }
