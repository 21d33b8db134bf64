"""The tables printed at the end of ``python -m bench soak`` (from the results dict, so a
saved results file can be printed again)."""

from __future__ import annotations

from typing import Any

from bench.env import format_table

__all__ = ["report"]


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
