"""The ingest report as text tables."""

from __future__ import annotations

from typing import Any

from bench.env import (
    format_table,
)

# --- report ----------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    parts: list[str] = []
    ds = r["dataset"]
    head = (
        f"backlog: {r['parameters']['events']:,} events ({r['parameters']['dataset']}: "
        f"{ds['users']:,} users, {ds['items']:,} items), load average "
        + ", ".join(f"{k} {v[0]}" for k, v in r["loadavg"].items())
    )
    if "job_runs_on" in r["parameters"]:
        head += (
            f"\njob (and trivial baseline) at parallelism {r['parameters']['parallelism']}: "
            f"{r['parameters']['job_runs_on']}"
        )
    parts.append(head)
    f = r.get("figures")
    if f:
        steady = f.get("steady_events_per_s_per_interval", {})
        rows: list[tuple[str, Any]] = [
            ("job launch -> metrics endpoint up (s)", f["metrics_endpoint_up_s"]),
            ("job launch -> first event consumed (s)", f["first_event_s"]),
            ("job launch -> last event consumed (s)", f["last_event_consumed_s"]),
            ("job launch -> last feature row applied (s)", f["drained_s"]),
            ("steady window (s after launch)", " - ".join(map(str, f["steady_window_s"]))),
            ("events/s sustained (steady window)", f["steady_events_per_s"]),
            (
                "trivial keyed job, same backlog, same run (events/s)",
                (r.get("baseline") or {}).get("steady_events_per_s", "-"),
            ),
            ("  ratio: this job / the trivial job", f.get("ratio_to_trivial_job", "-")),
            (
                "  per interval p10 / p50 / p90",
                " / ".join(str(steady.get(k, "-")) for k in ("p10", "p50", "p90")),
            ),
            ("events/s overall (first -> last event)", f.get("overall_events_per_s")),
            (
                "events/s end to end (first event -> all rows in Redis)",
                f.get("end_to_end_events_per_s"),
            ),
            ("drain: first event -> last row applied (s)", f.get("drain_after_first_event_s")),
            ("writer tail after the last event (s)", f.get("writer_tail_after_last_event_s")),
            ("CF updates/s (steady window)", f["steady_cf_updates_per_s"]),
            ("CF updates/s overall", f.get("overall_cf_updates_per_s")),
            ("feature rows emitted/s (steady)", f["steady_rows_emitted_per_s"]),
            ("feature rows applied/s by the writer (steady)", f["steady_rows_applied_per_s"]),
            (
                "consumed / dead letters / duplicates",
                f"{f['consumed']:,} / {f['dead_letters']} / {f['duplicates_dropped']}",
            ),
            (
                "item-factor feed records (per event)",
                f"{f['item_factor_feed_records']:,} ({f['item_factor_feed_records_per_event']})"
                if "item_factor_feed_records" in f
                else None,
            ),
            (
                "cf updates / rows emitted / rows committed",
                f"{f['cf_updates']:,} / {f['feature_rows_emitted']:,} / "
                f"{f['feature_rows_committed_by_writer']:,}",
            ),
        ]
        check = r.get("store_check", {})
        if check:
            rows.append(
                (
                    "store check: users exact / expected",
                    f"{check['users_exact']:,} / {check['users_expected']:,} "
                    f"({'ok' if check['ok'] else 'MISMATCH'})",
                )
            )
        for window in ("steady", "whole"):
            cpu = r.get("cpu", {}).get(window, {}).get("cpu_pct", {})
            for name, value in cpu.items():
                rows.append((f"cpu % of a core ({window}): {name}", value))
        parts.append(format_table(["ingest (Kafka backlog -> job -> Redis)", "value"], rows))
        steady_cpu = r.get("cpu", {}).get("steady", {})
        threads = steady_cpu.get("job_threads", [])[:10]
        if threads:
            thread_rows: list[tuple[Any, ...]] = [
                (t["thread"], t["cpu_pct"], t.get("runqueue_wait_pct", "-")) for t in threads
            ]
            thread_rows.append(
                ("sum of Python operator threads", steady_cpu.get("operator_threads_pct"), "")
            )
            thread_rows.append(
                ("  = CPU µs per event in the job", f.get("operator_thread_cpu_us_per_event"), "")
            )
            parts.append(
                format_table(
                    [
                        "job JVM threads, steady window",
                        "cpu % of a core",
                        "% waiting for a CPU",
                    ],
                    thread_rows,
                )
            )
    for name, spy in (r.get("job_profile") or {}).items():
        parts.extend(
            _job_profile(name, spy, f.get("operator_thread_cpu_us_per_event") if f else None)
        )
    for name, jvm in (r.get("jvm_profile") or {}).items():
        parts.extend(_jvm_profile(name, jvm))
    p = r.get("profile")
    if p:
        rows = [(stage, us) for stage, us in p["us_per_event"].items()]
        rows.append(("total", p["total_us_per_event"]))
        parts.append(
            format_table(
                [f"in-process profile, {p['events']:,} events (thread CPU)", "µs/event"], rows
            )
        )
        parts.append(
            format_table(["by operator", "µs/event"], list(p["groups_us_per_event"].items()))
        )
        parts.append(
            f"one interpreter at these costs: ≤ {p['implied_max_events_per_s_one_interpreter']:,}"
            " events/s"
        )
        top = p.get("cprofile_top_by_tottime")
        if top:
            parts.append(
                format_table(
                    ["cProfile (tottime)", "calls/ev", "tottime µs/ev", "cumtime µs/ev"],
                    [
                        (
                            e["function"],
                            e["calls_per_event"],
                            e["tottime_us_per_event"],
                            e["cumtime_us_per_event"],
                        )
                        for e in top
                    ],
                )
            )
    return "\n\n".join(parts)


def _job_profile(name: str, spy: dict[str, Any], us_per_event: float | None) -> list[str]:
    """py-spy's view of the job's Python inside Flink (bench/ingest/job_profile.py), with
    each share also in µs per event where the operator threads' cost is known."""
    if not spy.get("samples"):
        return [f"{name}: no samples with a Python stack"]

    def row(label: str, pct: float) -> tuple[str, float, Any]:
        return label, pct, round(pct / 100 * us_per_event) if us_per_event else "-"

    head = ["% of samples", "µs/event"]
    flink = [row(g, pct) for g, pct in spy["flink_calls_pct"].items()]
    flink.append(row("all calls into Flink", spy["flink_calls_total_pct"]))
    title = f"{name}: {spy['samples']:,} samples with a Python stack"
    return [
        format_table([f"{title}; calls into Flink", *head], flink),
        format_table(["inclusive", *head], [row(n, pct) for n, pct in spy["inclusive_pct"]]),
        format_table(["self", *head], [row(n, pct) for n, pct in spy["self_pct"]]),
        format_table(
            ["pickling, by the caller", *head],
            [row(n, pct) for n, pct in spy.get("pickling_by_caller_pct", [])],
        ),
    ]


def _jvm_profile(name: str, jvm: dict[str, Any]) -> list[str]:
    """async-profiler's view of a job JVM (bench/ingest/jvm_profile.py): shares of its
    CPU samples by thread, by kind of work and by the function on CPU."""
    if not jvm.get("samples"):
        return [f"{name}: no async-profiler samples"]
    title = f"{name}: {jvm['samples']:,} CPU samples (async-profiler, event {jvm.get('event')})"
    return [
        format_table([f"{title}; by kind", "% of samples"], jvm["kinds_pct"]),
        format_table(["by thread", "% of samples"], jvm["threads_pct"]),
        format_table(["on CPU (leaf frame)", "% of samples"], jvm["leaf_frames_pct"]),
    ]
