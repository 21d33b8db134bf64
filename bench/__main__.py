"""Benchmarks of the personalization platform on a private local stack.

    python -m bench freshness [--rate 1000 [2000 ...]] [--duration 60]
    python -m bench serving   [--users 100000] [--items 10000] [--rps 200 500] [--workers 1 2]
    python -m bench all
    python -m bench soak      [--minutes 10] [--rate 150] [--rps 80]
    python -m bench ingest    [--events 50000] [--dataset movielens|taobao|PATH]
    python -m bench stack     [--rps 300] [--rate 1000] [--duration 60] [--parallelism 1]
    python -m bench writer    [--events 30000] [--dataset movielens|taobao|PATH]
    python -m bench catalog   [--items 5000] [--changed 1500] [--neighbours 30]

Every run starts its own stack (temporary run dir, free 127.0.0.1 ports: Redis, Kafka,
the Flink job on a MiniCluster, the online-store writer, the gRPC server), stops it in
``finally``, prints tables and writes ``bench/results/<name>-<timestamp>.json`` with the
machine facts, the exact parameters and every figure.

On a small machine the load generators share the cores with what they measure; the
tables show the CPU each process used in each phase so the limits are visible.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from bench.env import (
    THROUGHPUT_SCENARIOS,
    BenchStack,
    CpuMeter,
    equal_priority,
    format_table,
    machine_info,
    say,
    venv_on_path,
    write_results,
)


def build_parser() -> argparse.ArgumentParser:
    general = argparse.ArgumentParser(add_help=False)
    g = general.add_argument_group("general")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--name", help="results file name prefix (default: the scenario)")
    g.add_argument("--keep-run-dir", action="store_true", help="keep the tmp run dir (logs)")
    g.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: first wait up to this long for CPU busy < --quiet-pct",
    )
    g.add_argument("--quiet-pct", type=float, default=40.0, help="%% of all cores")
    g.add_argument(
        "--stack-priority",
        action="store_true",
        help="ingest, freshness: run the job and the writer at the stack's CPU priority "
        "(settings.priority: below Kafka and the traffic, for serving's sake) instead of "
        "at the same priority as everything else",
    )

    common = argparse.ArgumentParser(add_help=False, parents=[general])

    from bench.job_placement import add_separate_item_side_argument

    f = common.add_argument_group("freshness")
    f.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[1000.0],
        help="background events/s; several = one phase each on the same pipeline, one table",
    )
    f.add_argument("--duration", type=float, default=60.0, help="probing seconds")
    f.add_argument(
        "--freshness-warmup",
        type=float,
        default=45.0,
        help="load before probing: the JVMs compile (JIT) for their first minute or so",
    )
    add_separate_item_side_argument(f)
    f.add_argument("--probe-interval", type=float, default=0.1)
    f.add_argument("--probe-timeout", type=float, default=10.0)
    f.add_argument("--poll-interval", type=float, default=0.002, help="Redis poll period")
    f.add_argument("--gen-users", type=int, default=10_000, help="generator users")

    s = common.add_argument_group("serving")
    s.add_argument("--users", type=int, default=100_000, help="seeded users")
    s.add_argument("--items", type=int, default=10_000, help="catalog items")
    s.add_argument("--template-users", type=int, default=2_000, help="simulated users")
    s.add_argument("--rps", type=float, nargs="+", default=[200.0, 500.0], help="open loop")
    s.add_argument("--phase-duration", type=float, default=15.0)
    s.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds per phase")
    s.add_argument("--concurrency", type=int, default=32, help="closed-loop workers")
    s.add_argument("--ghz-concurrency", type=int, default=50, help="ghz open-loop workers")
    s.add_argument("--channels", type=int, default=4, help="gRPC connections")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--deadline", type=float, default=1.0)
    s.add_argument("--feast-iterations", type=int, default=1000)
    s.add_argument("--no-ghz", action="store_true")
    s.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="serving processes (serving/workers.py); several counts = one run each, "
        "compared (ratio to the first, ours / floor)",
    )
    s.add_argument(
        "--no-floor", action="store_true", help="skip the floor server (bench/floor_server.py)"
    )
    s.add_argument(
        "--similar",
        action="store_true",
        help="also run the plan for Recommender.SimilarItems (random item, with a user)",
    )
    s.add_argument(
        "--strategy", default="", help="ranking strategy to serve (default: the settings')"
    )
    s.add_argument(
        "--keep-pipeline",
        action="store_true",
        help="all: leave Flink job, writer and Kafka running (idle) during serving",
    )

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    sub.add_parser("freshness", parents=[common], help="event-to-feature freshness under load")
    sub.add_parser("serving", parents=[common], help="Recommend latency/throughput + Feast")
    sub.add_parser("all", parents=[common], help="freshness, then serving")
    from bench.soak import add_arguments as add_soak_arguments

    add_soak_arguments(
        sub.add_parser(
            "soak", parents=[general], help="ingest + serving load for minutes: errors, memory"
        )
    )
    from bench.ingest import add_arguments as add_ingest_arguments

    add_ingest_arguments(
        sub.add_parser(
            "ingest", parents=[general], help="sustained events/s and CF updates/s of the job"
        )
    )
    from bench.whole_stack import add_arguments as add_stack_arguments

    add_stack_arguments(
        sub.add_parser(
            "stack",
            parents=[general],
            help="Recommend under ingest on the whole stack, beside the same server isolated",
        )
    )
    from bench.catalog_refresh import add_arguments as add_catalog_arguments
    from bench.online_writer import add_arguments as add_writer_arguments

    add_writer_arguments(
        sub.add_parser(
            "writer", parents=[general], help="rows/s the online-store writer applies on one core"
        )
    )
    add_catalog_arguments(
        sub.add_parser(
            "catalog", parents=[general], help="CPU of one serving catalog refresh (busy catalog)"
        )
    )
    from bench.ranking import add_arguments as add_ranking_arguments

    add_ranking_arguments(
        sub.add_parser(
            "ranking", parents=[general], help="CPU of one hybrid ranking (large catalog)"
        )
    )
    return parser


def wait_quiet(timeout_s: float, threshold_pct: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        meter = CpuMeter({}).start()
        time.sleep(3.0)
        busy = meter.stop()["machine (all cores)"]
        if busy < threshold_pct:
            say(f"machine quiet enough: {busy:.0f}% busy")
            return
        if time.monotonic() >= deadline:
            say(f"machine still {busy:.0f}% busy after {timeout_s:.0f}s: running anyway")
            return
        say(f"machine {busy:.0f}% busy (other tenants); waiting")
        time.sleep(7.0)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``finally``: the stack is stopped


# --- tables ----------------------------------------------------------------------------


def machine_table(info: dict[str, Any]) -> str:
    rows = [
        ("nproc (usable)", f"{info['nproc']} ({info['cpus_usable']})"),
        ("cpu", info["cpu_model"]),
        ("memory GB", info["mem_total_gb"]),
        ("load average at start (1/5/15 min)", " / ".join(map(str, info["loadavg_at_start"]))),
        (
            f"cpu busy in 2 s before start (% of {info['nproc']}00)",
            info["cpu_busy_before_start_pct_of_all_cores"],
        ),
        ("python / grpcio / feast", f"{info['python']} / {info['grpcio']} / {info['feast']}"),
        ("git", f"{info['git_commit']}{' (dirty)' if info['git_dirty'] else ''}"),
    ]
    return format_table(["machine", ""], rows)


def freshness_table(runs: list[dict[str, Any]]) -> str:
    """One column per rate (``--rate 1000 2000``: the phases of one run, in order)."""

    def row(label: str, value: Any) -> tuple[Any, ...]:
        return (label, *(value(r) for r in runs))

    def pipe(key: str) -> Any:
        return lambda r: r.get("pipeline", {}).get(key)

    rows: list[tuple[Any, ...]] = [
        row("background load target (ev/s)", lambda r: r["parameters"]["rate_ev_s"]),
        row("sender achieved (ev/s)", lambda r: r["sender"]["achieved_rate"]),
        row("events into Kafka (ev/s, offsets)", pipe("events_into_kafka_per_s")),
        row("Flink consumed (ev/s, committed on checkpoint)", pipe("flink_consumed_per_s")),
        row("feature rows emitted by the job (/s)", pipe("feature_updates_emitted_per_s")),
        row("feature rows applied by the writer (/s)", pipe("writer_applied_per_s")),
        row("writer lag msgs (mean / max)", lambda r: _lag(pipe("writer_lag_msgs")(r))),
        row(
            "Flink lag msgs (mean / max)",
            lambda r: _lag(pipe("flink_lag_msgs_committed_on_checkpoint")(r)),
        ),
        row(
            f"probes sent / seen / lost ({runs[0]['parameters']['duration_s']:g}s)",
            _probes,
        ),
        row("freshness p50 (ms)", lambda r: r["freshness"].get("p50_ms")),
        row("freshness p90 (ms)", lambda r: r["freshness"].get("p90_ms")),
        row("freshness p99 (ms)", lambda r: r["freshness"].get("p99_ms")),
        row("freshness max (ms)", lambda r: r["freshness"].get("max_ms")),
    ]
    cpu_names: list[str] = []
    for r in runs:
        cpu_names += [c for c in r.get("cpu_pct", {}) if c not in cpu_names]
    rows += [
        row(f"cpu % of a core: {name}", lambda r, n=name: r.get("cpu_pct", {}).get(n))
        for name in cpu_names
    ]
    columns = [f"{r['parameters']['rate_ev_s']:g} ev/s" for r in runs]
    return format_table(["freshness (produce -> row readable in Redis)", *columns], rows)


def _lag(d: dict[str, Any] | None) -> str:
    return f"{d['mean']} / {d['max']}" if d else "-"


def _probes(r: dict[str, Any]) -> str:
    return f"{r['probes_sent']} / {r['probes_seen']} / {r['probes_lost']}"


def serving_tables(r: dict[str, Any]) -> str:
    rows = []
    for phase in [*r["python_load"], *r["ghz"]]:
        if phase.get("failed"):
            rows.append((phase["tool"], phase["phase"], *(["-"] * 11)))
            continue
        lat = phase["latency"]
        cpu = phase.get("cpu_pct", {})
        gen = phase.get("self_cpu_pct", cpu.get("ghz"))
        rows.append(
            (
                phase["tool"],
                phase["phase"],
                phase["achieved_rps"],
                lat.get("p50_ms"),
                lat.get("p90_ms"),
                lat.get("p99_ms"),
                lat.get("p999_ms"),
                lat.get("max_ms"),
                phase["error_count"],
                cpu.get("grpc server"),
                gen,
                cpu.get("others"),
                cpu.get("machine (all cores)"),
            )
        )
    load = format_table(
        [
            "Recommend k=10 (gRPC)",
            "phase",
            "ok rps",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "server cpu%",
            "loadgen cpu%",
            "others cpu%",
            "machine cpu%",
        ],
        rows,
    )
    feast_rows = [
        (name, s["count"], s["p50_ms"], s["p99_ms"], s["p999_ms"])
        for name, s in r["feast_in_process"].items()
    ]
    feast = format_table(
        ["in process, same Redis", "n", "p50 ms", "p99 ms", "p99.9 ms"], feast_rows
    )
    seed = r["seed"]
    p = r["parameters"]
    seed_line = (
        f"seeded {seed['users_written']:,} users ({seed['template_users']:,} distinct rows from "
        f"{seed['events_folded']:,} simulated events) at {seed['users_rows_per_s']:,} rows/s; "
        f"{seed['items']:,} items; k={p['k']}, deadline {p['deadline_s']}s, "
        f"{p['channels']} connections, closed loop c={p['closed_loop_concurrency']}, "
        f"{p['phase_duration_s']:g}s per phase after {p['warmup_s']:g}s warm-up"
    )
    workers = ""
    if r.get("workers"):
        workers = "\n\n" + format_table(
            [
                "serving processes",
                "closed-loop rps",
                "ratio",
                "p99 ms",
                "server cpu%",
                "floor rps",
                "floor ratio",
                "floor p99 ms",
                "ours / floor",
            ],
            [
                (
                    f"{w['workers']} ({w['tool']})",
                    w["closed_rps"],
                    w.get("ratio"),
                    w["closed_p99_ms"],
                    w["server_cpu_pct"],
                    w["floor_rps"],
                    w.get("floor_ratio"),
                    w["floor_p99_ms"],
                    w["of_floor"],
                )
                for w in r["workers"]
            ],
        )
    return f"{load}{workers}\n\n{feast}\n\n{seed_line}"


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    venv_on_path()
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet, args.quiet_pct)
    info = machine_info()
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "scenario": args.scenario,
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
    }
    print(machine_table(info), flush=True)
    bench = BenchStack.create(keep_run_dir=args.keep_run_dir)
    say(f"private stack in {bench.run_path}")
    if args.scenario in THROUGHPUT_SCENARIOS and not args.stack_priority:
        bench.settings = equal_priority(bench.settings)
        say("job and writer at nice 0, as Kafka and the traffic (--stack-priority: the stack's)")
    results["priority"] = bench.settings.priority.model_dump()
    failed: BaseException | None = None
    try:
        if args.scenario in ("freshness", "all"):
            results["freshness"] = _guard("freshness", bench, args)
        if args.scenario == "all" and not args.keep_pipeline:
            from ops import stack

            say("stopping the write path (Flink job, writer, Kafka) before the serving runs")
            bench.stop_component(stack.FLINK_JOB)
            bench.stop_component(stack.WRITER)
            from ops.infra import kafka_broker

            if "kafka" in bench.started:
                kafka_broker.stop(bench.settings)
                bench.started.remove("kafka")
        if args.scenario in ("serving", "all"):
            results["serving"] = _guard("serving", bench, args)
        if args.scenario == "soak":
            results["soak"] = _guard("soak", bench, args)
        if args.scenario == "ingest":
            results["ingest"] = _guard("ingest", bench, args)
        if args.scenario == "stack":
            results["stack"] = _guard("stack", bench, args)
        if args.scenario == "writer":
            results["writer"] = _guard("writer", bench, args)
        if args.scenario == "catalog":
            results["catalog"] = _guard("catalog", bench, args)
        if args.scenario == "ranking":
            results["ranking"] = _guard("ranking", bench, args)
    except BaseException as exc:
        failed = exc
        results["error"] = repr(exc)
    finally:
        say("stopping the private stack")
        bench.stop()
    results["wall_s"] = round(time.monotonic() - t0, 1)
    path = write_results(args.name or args.scenario, results)

    print()
    print(machine_table(info))
    if isinstance(results.get("freshness"), dict) and results["freshness"].get("runs"):
        print()
        print(f"job: {results['freshness'].get('job_runs_on', '')}")
        print(freshness_table(results["freshness"]["runs"]))
    if isinstance(results.get("serving"), dict) and "python_load" in results["serving"]:
        print()
        print(serving_tables(results["serving"]))
    soak = results.get("soak")
    if isinstance(soak, dict) and "verdict" in soak:
        from bench.soak import report

        print()
        print(report(soak))
    ingest = results.get("ingest")
    if isinstance(ingest, dict) and "dataset" in ingest:
        from bench.ingest import report as ingest_report

        print()
        print(ingest_report(ingest))
    whole = results.get("stack")
    if isinstance(whole, dict) and "phases" in whole:
        from bench.whole_stack import report as stack_report

        print()
        print(stack_report(whole))
    online_writer = results.get("writer")
    if isinstance(online_writer, dict) and "measured" in online_writer:
        from bench.online_writer import report as writer_report

        print()
        print(writer_report(online_writer))
    catalog = results.get("catalog")
    if isinstance(catalog, dict) and "ways" in catalog:
        from bench.catalog_refresh import report as catalog_report

        print()
        print(catalog_report(catalog))
    ranking = results.get("ranking")
    if isinstance(ranking, dict) and "cpu_ms" in ranking:
        from bench.ranking import report as ranking_report

        print()
        print(ranking_report(ranking))
    print(f"\nwall time {results['wall_s']:.0f}s; results: {path}")
    if failed is not None:
        print(f"FAILED: {failed!r}", file=sys.stderr)
        return 1
    if isinstance(soak, dict) and not soak["verdict"]["pass"]:
        return 1  # errors, or memory that is not flat
    return 0


def _guard(name: str, bench: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    from bench.catalog_refresh import run_catalog_bench
    from bench.freshness import run_freshness
    from bench.ingest import run_ingest
    from bench.online_writer import run_writer_bench
    from bench.ranking import run_ranking_bench
    from bench.serving import run_serving
    from bench.soak import run_soak
    from bench.whole_stack import run_stack

    fn = {
        "freshness": run_freshness,
        "serving": run_serving,
        "soak": run_soak,
        "ingest": run_ingest,
        "stack": run_stack,
        "writer": run_writer_bench,
        "catalog": run_catalog_bench,
        "ranking": run_ranking_bench,
    }[name]
    try:
        return fn(bench, args)
    except Exception as exc:
        from bench.env import BENCH_SERVER
        from ops import stack

        for comp in (stack.FLINK_JOB, stack.WRITER, BENCH_SERVER):
            if comp.name in bench.started:
                print(f"--- {comp.name} log tail ---\n{bench.log_tail(comp)}", file=sys.stderr)
        raise RuntimeError(f"{name} failed: {exc}") from exc


if __name__ == "__main__":
    raise SystemExit(main())
