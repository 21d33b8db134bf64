"""Scenario ``serving``: Recommend (and with ``--similar`` SimilarItems) latency and
throughput over gRPC, plus Feast for scale.

1. Seed Redis: ``n_users`` user rows and a catalog of ``n_items`` items.
   Rows are real: a simulated shop (``traffic.generator``) runs a few
   hours of sessions for ``template_users`` users and the job's own pure state
   functions (``flink_jobs.profile`` / ``flink_jobs.items``) fold them into rows.
   The ``n_users`` benchmark users (ids ``bu-0`` .. ``bu-{n-1}``) reuse those rows
   round-robin, written with Feast's ``RedisOnlineStore.online_write_batch`` in
   batches; items go through ``OnlineStoreWriter.write`` (rows + the item index).
2. Start the gRPC server process and wait until its catalog answers.
3. Drive load from a separate process (``bench.loadgen``; and ``ghz`` when found):
   open loop at fixed rates, then closed loop to saturation. With ``--workers 1 2``
   steps 2-3 run once per process count (``serving/workers.py``), each followed by the
   floor server (``bench/floor_server.py``) with as many processes under the same
   closed loop: the table reports each count's rate, its ratio to the first count's
   and ours / floor.
   With ``--similar`` the same plan runs again for ``Recommender.SimilarItems`` (a random
   catalogued item, k items, with a random user so the purchase exclusion reads the
   user's row as Recommend does), on the same server: results under ``similar``.
4. In process, time Feast's ``FeatureStore.get_online_features`` for the same rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import BENCH_SERVER, BenchStack, CpuMeter, say
from bench.stats import latency_summary
from feature_repo.names import ITEM_STATS, USER_PROFILE
from personalization import feature_store as fs
from personalization.settings import PROJECT_ROOT, Settings
from serving.workers import with_workers

USER_PREFIX = "bu-"
ITEM_PREFIX = "bsku-"
UNKNOWN_USER = "__bench_unknown_user__"


# --- seeding -------------------------------------------------------------------------


def build_rows(
    settings: Settings, template_users: int, n_items: int, seed: int, hours: float = 3.0
) -> tuple[list[tuple[dict[str, Any], int]], list[Any], dict[str, Any]]:
    """(user rows with version_us, item FeatureUpdates, stats) from simulated traffic."""
    from flink_jobs import items as items_mod
    from flink_jobs import profile
    from personalization.events import EventRejected, validate_event
    from personalization.feature_updates import FeatureUpdate
    from traffic.generator import GeneratorConfig, TrafficGenerator

    t0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - int(hours * 3600 * 1000)
    cfg = GeneratorConfig(
        seed=seed,
        n_users=template_users,
        n_items=n_items,
        start_ms=start_ms,
        id_prefix=f"bench{seed}",
    )
    gen = TrafficGenerator(cfg)
    fcfg = settings.features
    users: dict[str, Any] = {}
    item_states: dict[str, Any] = {}
    n_events = 0
    for payload in gen.events():
        if payload["event_time"] > now_ms:
            break
        if payload.get("item_id"):
            payload["item_id"] = ITEM_PREFIX + str(payload["item_id"])
        try:
            event = validate_event(payload, now_ms=now_ms)
        except EventRejected:
            continue
        n_events += 1
        state = users.get(event.user_id)
        if state is None:
            state = users[event.user_id] = profile.new_state(event.user_id)
        profile.apply_event(state, event, fcfg)
        if event.item_id:
            item = item_states.get(event.item_id)
            if item is None:
                item = item_states[event.item_id] = items_mod.ItemState(event.item_id)
            items_mod.apply_item_event(item, event, fcfg.trending_half_life_s)
    user_rows = [(profile.user_feature_row(s, fcfg), s.version_us) for s in users.values()]
    # Items nobody touched in those hours are still in the catalog (category, price).
    for cat_item in gen.catalog.items:
        item_id = ITEM_PREFIX + cat_item.item_id
        if item_id not in item_states:
            item_states[item_id] = items_mod.ItemState(
                item_id,
                category=cat_item.category,
                price=cat_item.price,
                last_event_ms=start_ms,
                trending_ref_ms=start_ms,
                version_us=start_ms * 1000,
            )
    item_updates = [
        FeatureUpdate(ITEM_STATS, s.item_id, s.version_us, items_mod.item_feature_row(s))
        for s in item_states.values()
    ]
    stats = {
        "simulated_hours": hours,
        "events_folded": n_events,
        "template_users": len(user_rows),
        "items": len(item_updates),
        "items_with_events": sum(1 for s in item_states.values() if s.trending > 0),
        "build_s": round(time.monotonic() - t0, 2),
    }
    return user_rows, item_updates, stats


def seed_store(
    settings: Settings,
    n_users: int,
    n_items: int,
    template_users: int,
    seed: int,
    hours: float = 3.0,
    batch: int = 5000,
) -> dict[str, Any]:
    from feast.infra.online_stores.redis import RedisOnlineStore

    from personalization.online_store import OnlineStoreWriter

    user_rows, item_updates, stats = build_rows(settings, template_users, n_items, seed, hours)
    say(
        f"seed: {stats['events_folded']:,} simulated events -> {len(user_rows):,} user rows, "
        f"{len(item_updates):,} items ({stats['build_s']}s)"
    )
    # Items through the writer: Feast rows + {project}:item_index, as the pipeline does.
    t0 = time.monotonic()
    writer = OnlineStoreWriter(settings)
    for i in range(0, len(item_updates), batch):
        writer.write(item_updates[i : i + batch])
    items_s = time.monotonic() - t0

    # Users: templates encoded once, written with online_write_batch in batches.
    config = fs.repo_config(settings)
    view = fs.feature_view(USER_PROFILE)
    store = RedisOnlineStore()
    templates = [
        (fs.encode_row(USER_PROFILE, row), datetime.fromtimestamp(v / 1_000_000, tz=UTC))
        for row, v in user_rows
    ]
    t0 = time.monotonic()
    for lo in range(0, n_users, batch):
        data: list[Any] = []
        for i in range(lo, min(n_users, lo + batch)):
            values, ts = templates[i % len(templates)]
            data.append((fs.entity_key(USER_PROFILE, f"{USER_PREFIX}{i}"), values, ts, None))
        store.online_write_batch(config, view, data, None)
    users_s = time.monotonic() - t0
    stats.update(
        users_written=n_users,
        users_write_s=round(users_s, 2),
        users_rows_per_s=round(n_users / users_s) if users_s else None,
        items_write_s=round(items_s, 2),
    )
    say(
        f"seed: {n_users:,} users in {users_s:.1f}s ({n_users / users_s:,.0f} rows/s), "
        f"{len(item_updates):,} items in {items_s:.1f}s"
    )
    writer.redis.close()
    return stats


# --- server --------------------------------------------------------------------------


def target(settings: Settings) -> str:
    return f"{settings.serving.host}:{settings.serving.port}"


def with_access_control(settings: Settings) -> Settings:
    """The bench's server runs as ``personalize up`` serves: with access control on (the
    interceptor is on the request path), a key of every scope in the run dir; the load
    generators present it from files, never on a command line."""
    from ops.local_key import ensure_local_access

    access = ensure_local_access(settings)
    if access is None:  # an operator's keys file: the bench has no key of it
        raise RuntimeError("bench serving makes its own keys: unset serving.api_keys_file")
    metadata = settings.run_path / "ghz-metadata.json"
    fd = os.open(metadata, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(json.dumps({"x-api-key": access.key}))
    return access.settings


def api_key_file(settings: Settings) -> Path | None:
    """The key file of a server with access control on (None: the server is open)."""
    from ops.local_key import key_file

    return key_file(settings) if settings.serving.api_keys_file else None


def wait_catalog(settings: Settings, timeout_s: float = 60.0) -> float:
    """Poll Recommend for an unknown user until items come back; seconds waited."""
    import grpc

    from serving.client import RecommenderClient

    t0 = time.monotonic()
    deadline = t0 + timeout_s
    key_path = api_key_file(settings)
    api_key = key_path.read_text(encoding="ascii").strip() if key_path else ""
    with RecommenderClient(target(settings), deadline_s=1.0, api_key=api_key) as client:
        while time.monotonic() < deadline:
            try:
                if client.recommend(UNKNOWN_USER, k=10).items:
                    return time.monotonic() - t0
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"the server's catalog was still empty after {timeout_s:.0f}s")


# --- load ----------------------------------------------------------------------------


def run_loadgen(settings: Settings, opts: dict[str, Any], sessions: dict[str, int]) -> dict:
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", target(settings)]
    if (key_path := api_key_file(settings)) is not None:
        cmd += ["--api-key-file", str(key_path)]
    for key, value in opts.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    meter = CpuMeter(sessions, child_label="load generator").start()
    timeout = float(opts["duration"]) + float(opts["warmup"]) + 60
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    cpu = meter.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["cpu_pct"] = cpu
    result["command"] = " ".join(cmd[1:])
    return result


def find_ghz() -> str | None:
    """ghz on PATH, beside this interpreter (``scripts/bootstrap.sh --bench`` builds it
    into .venv/bin), or where ``go install`` puts it."""
    found = shutil.which("ghz")
    if found:
        return found
    beside = Path(sys.executable).parent / "ghz"
    if beside.exists():
        return str(beside)
    # `go install` puts it in $GOPATH/bin, ~/go/bin by default.
    for gopath in (os.environ.get("GOPATH"), str(Path.home() / "go")):
        candidate = Path(gopath) / "bin" / "ghz" if gopath else None
        if candidate is not None and candidate.exists():
            return str(candidate)
    return None


def run_ghz(
    ghz: str,
    settings: Settings,
    *,
    mode: str,
    rate: float,
    concurrency: int,
    connections: int,
    duration: float,
    warmup: float,
    n_users: int,
    k: int,
    deadline: float,
    sessions: dict[str, int],
    method: str = "recommend",
    n_items: int = 0,
) -> dict[str, Any]:
    """One ghz run; percentiles recomputed from its per-request details (for p99.9)."""
    proto_dir = PROJECT_ROOT / "protos"
    user = f"{USER_PREFIX}{{{{randomInt 0 {n_users}}}}}"
    call = "personalization.v1.Recommender/Recommend"
    data = json.dumps({"user_id": user, "k": k})
    if method == "similar":
        call = "personalization.v1.Recommender/SimilarItems"
        # A Go raw string (backquotes): JSON would escape double quotes inside the template.
        item = f"{ITEM_PREFIX}sku-{{{{printf `%06d` (randomInt 0 {n_items})}}}}"
        data = json.dumps({"item_id": item, "k": k, "user_id": user})
    cmd = [
        ghz,
        "--insecure",
        "--proto",
        str(proto_dir / "personalization" / "v1" / "recommender.proto"),
        "--import-paths",
        str(proto_dir),
        "--call",
        call,
        "-d",
        data,
        "-z",
        f"{duration + warmup:g}s",
        "--duration-stop",
        "wait",
        "-t",
        f"{deadline:g}s",
        "--connections",
        str(connections),
        "-O",
        "json",
    ]
    if api_key_file(settings) is not None:
        cmd += ["--metadata-file", str(settings.run_path / "ghz-metadata.json")]
    if mode == "open":
        # --async: a request is sent on schedule whether or not earlier ones answered.
        cmd += ["--rps", f"{rate:g}", "--async", "-c", str(concurrency)]
        cmd += ["--skipFirst", str(int(rate * warmup))]
    else:
        cmd += ["-c", str(concurrency)]
    cmd.append(target(settings))
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    meter = CpuMeter(sessions, child_label="ghz").start()
    try:
        out, err = proc.communicate(timeout=duration + warmup + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    cpu = meter.stop()
    if proc.returncode != 0 and not out.strip():
        raise RuntimeError(f"ghz failed ({proc.returncode}): {err[-2000:]}")
    report = json.loads(out)
    details = report.get("details") or []
    start_ns: int | None = None
    if details and mode == "closed":
        # Drop the warm-up seconds by timestamp (ghz's skipFirst needs a count).
        first = min(_ts_ns(d["timestamp"]) for d in details)
        start_ns = first + int(warmup * 1e9)
        details = [d for d in details if _ts_ns(d["timestamp"]) >= start_ns]
    ok = [d["latency"] / 1e9 for d in details if d.get("status") == "OK"]
    errors: dict[str, int] = {}
    for d in details:
        if d.get("status") != "OK":
            errors[d.get("status", "?")] = errors.get(d.get("status", "?"), 0) + 1
    if details:
        span_ns = max(_ts_ns(d["timestamp"]) for d in details) - min(
            _ts_ns(d["timestamp"]) for d in details
        )
        measured_s = max(1e-9, span_ns / 1e9)
    else:
        measured_s = duration
    return {
        "tool": "ghz",
        "method": method,
        "mode": mode,
        "target_rps": rate if mode == "open" else None,
        "concurrency": concurrency,
        "channels": connections,
        "duration_s": duration,
        "warmup_s": warmup,
        "ok": len(ok),
        "errors": errors,
        "error_count": sum(errors.values()),
        "achieved_rps": round(len(ok) / measured_s, 1),
        "ghz_reported_rps": round(float(report.get("rps", 0.0)), 1),
        "latency": latency_summary(ok),
        "ghz_latency_distribution": report.get("latencyDistribution"),
        "cpu_pct": cpu,
        "command": " ".join(cmd[1:]),
    }


def _ts_ns(stamp: str) -> int:
    # RFC 3339 with nanoseconds, e.g. 2025-01-01T12:00:00.123456789Z or +02:00.
    main, _, frac_tz = stamp.partition(".")
    tz = ""
    frac = frac_tz
    for sep in ("Z", "+", "-"):
        if sep in frac_tz:
            frac, _, rest = frac_tz.partition(sep)
            tz = sep + rest
            break
    base = datetime.fromisoformat(main + (tz if tz != "Z" else "+00:00"))
    return int(base.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


# --- Feast in process -----------------------------------------------------------------


def feast_comparison(
    settings: Settings, n_users: int, n_items: int, iterations: int, seed: int
) -> dict[str, Any]:
    """In-process timings of Feast's read API (and our one-HMGET reader) on the same rows."""
    from serving.online_features import UserFeatureReader

    rng = random.Random(seed)
    store = fs.feature_store(settings)
    user_features = [f"user_profile:{f.name}" for f in fs.feature_view(USER_PROFILE).features]
    item_features = [f"item_stats:{f.name}" for f in fs.feature_view(ITEM_STATS).features]
    item_ids = [f"{ITEM_PREFIX}sku-{i:06d}" for i in range(n_items)]

    def one_user() -> None:
        rows = [{"user_id": f"{USER_PREFIX}{rng.randrange(n_users)}"}]
        out = store.get_online_features(features=user_features, entity_rows=rows).to_dict()
        assert out["user_id"], out

    def hundred_items() -> None:
        rows = [{"item_id": i} for i in rng.sample(item_ids, 100)]
        store.get_online_features(features=item_features, entity_rows=rows).to_dict()

    def user_and_items() -> None:
        one_user()
        hundred_items()

    reader = UserFeatureReader(settings)

    def hmget() -> None:
        features = reader.read(f"{USER_PREFIX}{rng.randrange(n_users)}")
        assert features is not None

    cases = [
        ("feast get_online_features: 1 user x 22 features", one_user, iterations),
        ("feast get_online_features: 100 items x 11 features", hundred_items, iterations // 5),
        ("feast: 1 user + 100 items (2 calls)", user_and_items, iterations // 5),
        ("UserFeatureReader.read: 1 user (1 HMGET + decode)", hmget, iterations),
    ]
    results: dict[str, Any] = {}
    for name, fn, n in cases:
        for _ in range(max(5, n // 20)):  # warm-up
            fn()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        results[name] = latency_summary(samples)
        s = results[name]
        say(f"{name}: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms (n={n})")
    reader.close()
    return results


# --- scenario --------------------------------------------------------------------------


def run_serving(bench: BenchStack, args: Any) -> dict[str, Any]:
    settings = bench.settings
    bench.start_redis()
    bench.feast_apply()
    seed_stats = seed_store(settings, args.users, args.items, args.template_users, args.seed)
    if getattr(args, "strategy", ""):
        ranking = settings.ranking.model_copy(update={"strategy": args.strategy})
        bench.settings = settings = settings.model_copy(update={"ranking": ranking})
    bench.settings = settings = with_access_control(settings)
    say(f"ranking strategy: {settings.ranking.strategy}; access control on (API key)")
    worker_counts = list(dict.fromkeys(getattr(args, "workers", None) or [1]))
    plan: list[tuple[str, float]] = [("open", r) for r in args.rps]
    plan.append(("closed", 0.0))
    ghz_path = None if args.no_ghz else find_ghz()
    if not ghz_path:
        say(
            "ghz not found (PATH, .venv/bin, $GOPATH/bin, ~/go/bin; bash scripts/bootstrap.sh "
            "--bench installs it): python load generator numbers only"
        )

    phases: list[dict[str, Any]] = []
    ghz_phases: list[dict[str, Any]] = []
    similar: dict[str, list[dict[str, Any]]] = {"python_load": [], "ghz": []}
    comparison: list[dict[str, Any]] = []
    waited = 0.0
    for n in worker_counts:
        bench.settings = settings = with_workers(settings, n)
        say(f"--- serving with {n} worker process(es) ---")
        bench.start_component(BENCH_SERVER)
        from ops import stack

        stack.wait_server_ready(settings)
        waited = wait_catalog(settings)
        say(f"server catalog loaded ({waited:.1f}s after health SERVING)")
        sessions = _sessions(bench)
        prefix = f"w={n} " if len(worker_counts) > 1 else ""
        python_run, ghz_run = _load_phases(settings, args, plan, sessions, ghz_path, prefix)
        phases += python_run
        ghz_phases += ghz_run
        if getattr(args, "similar", False):
            python_sim, ghz_sim = _load_phases(
                settings, args, plan, sessions, ghz_path, prefix + "SimilarItems ", "similar"
            )
            similar["python_load"] += python_sim
            similar["ghz"] += ghz_sim
        bench.stop_component(BENCH_SERVER)
        floor = None if getattr(args, "no_floor", False) else _floor(bench, args, n, ghz_path)
        comparison.append(_compare(n, python_run, ghz_run, floor))

    _ratios(comparison)
    for row in comparison:
        say(
            f"workers {row['workers']}: closed loop {row['closed_rps']} rps ({row['tool']}), "
            f"x{row['ratio']} of {comparison[0]['workers']} worker(s); floor "
            f"{row['floor_rps']} rps, ours/floor {row['of_floor']}"
        )

    say("feast comparison (in process, server idle)")
    feast = feast_comparison(settings, args.users, args.items, args.feast_iterations, args.seed)
    return {
        "parameters": {
            "users": args.users,
            "items": args.items,
            "template_users": args.template_users,
            "k": args.k,
            "deadline_s": args.deadline,
            "open_loop_rps": args.rps,
            "closed_loop_concurrency": args.concurrency,
            "ghz_open_loop_concurrency": args.ghz_concurrency,
            "channels": args.channels,
            "phase_duration_s": args.phase_duration,
            "warmup_s": args.warmup,
            "workers": worker_counts,
            "server": "serving.server --no-collector (grpc.aio, Recommend on the event loop; "
            "--workers N: N processes on one port, serving/workers.py)",
            "floor": "bench/floor_server.py (grpc.aio, one HMGET + numpy items x 32 + top-k)",
            "strategy": settings.ranking.strategy,
            "target": target(settings),
        },
        "seed": seed_stats,
        "catalog_wait_s": round(waited, 2),
        "python_load": phases,
        "ghz": ghz_phases,
        "ghz_path": ghz_path,
        "workers": comparison,
        "similar": similar,
        "feast_in_process": feast,
    }


def _sessions(bench: BenchStack) -> dict[str, int]:
    # The workers are forked into the supervisor's session: its CPU includes theirs.
    sessions = {"grpc server": bench.component_pid(BENCH_SERVER) or 0}
    redis_pid = bench.service_pid("redis")
    if redis_pid:
        sessions["redis"] = redis_pid
    for name in ("flink-job", "online-store-writer"):
        pid = _component_pid(bench, name)
        if pid:
            sessions[name] = pid
    return sessions


def _load_phases(
    settings: Settings,
    args: Any,
    plan: list[tuple[str, float]],
    sessions: dict[str, int],
    ghz_path: str | None,
    prefix: str = "",
    method: str = "recommend",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The python load generator's phases, then ghz's (when found), on one server, for
    ``method`` (recommend or similar)."""
    common = {
        "method": method,
        "items": args.items,
        "users": args.users,
        "k": args.k,
        "deadline": args.deadline,
        "duration": args.phase_duration,
        "warmup": args.warmup,
        "channels": args.channels,
    }
    phases: list[dict[str, Any]] = []
    for mode, rate in plan:
        opts = dict(common, mode=mode)
        if mode == "open":
            opts["rate"] = rate
        else:
            opts["concurrency"] = args.concurrency
        label = prefix + _label(mode, rate, args.concurrency)
        say(f"python load: {label} for {args.phase_duration:g}s (+{args.warmup:g}s warm-up)")
        result = run_loadgen(settings, opts, sessions)
        result["phase"] = label
        phases.append(result)
        _say_phase(result)
    ghz_phases: list[dict[str, Any]] = []
    for mode, rate in plan if ghz_path else []:
        assert ghz_path is not None
        label = prefix + _label(mode, rate, args.concurrency)
        say(f"ghz: {label} for {args.phase_duration:g}s (+{args.warmup:g}s warm-up)")
        try:
            result = _ghz_phase(ghz_path, settings, args, mode, rate, sessions, method)
        except Exception as exc:
            say(f"ghz {label} failed: {exc!r}")
            ghz_phases.append({"phase": label, "tool": "ghz", "failed": repr(exc)})
            continue
        result["phase"] = label
        ghz_phases.append(result)
        _say_phase(result)
    return phases, ghz_phases


def _label(mode: str, rate: float, concurrency: int) -> str:
    return f"open {rate:g} rps" if mode == "open" else f"closed c={concurrency}"


def _ghz_phase(
    ghz_path: str,
    settings: Settings,
    args: Any,
    mode: str,
    rate: float,
    sessions: dict[str, int],
    method: str = "recommend",
) -> dict[str, Any]:
    return run_ghz(
        ghz_path,
        settings,
        mode=mode,
        rate=rate,
        concurrency=args.ghz_concurrency if mode == "open" else args.concurrency,
        connections=args.channels,
        duration=args.phase_duration,
        warmup=args.warmup,
        n_users=args.users,
        k=args.k,
        deadline=args.deadline,
        sessions=sessions,
        method=method,
        n_items=args.items,
    )


def _closed(phases: list[dict[str, Any]]) -> dict[str, Any] | None:
    for phase in phases:
        if phase.get("mode") == "closed" and not phase.get("failed"):
            return phase
    return None


def _floor(bench: BenchStack, args: Any, workers: int, ghz_path: str | None) -> dict[str, Any]:
    """The floor server (bench/floor_server.py) with ``workers`` processes, closed loop
    with the same tool as the comparison (ghz when found)."""
    from ops.infra.processes import free_port

    settings = bench.settings
    port = free_port()
    floor_settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"port": port})}
    )
    cmd = [
        sys.executable,
        "-m",
        "bench.floor_server",
        "--port",
        str(port),
        "--redis-host",
        settings.redis.host,
        "--redis-port",
        str(settings.redis.port),
        "--project",
        settings.feast.project,
        "--items",
        str(args.items),
        "--workers",
        str(workers),
    ]
    log = (settings.run_path / "logs" / f"floor-{workers}.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_answering(target(floor_settings), proc)
        sessions = {"grpc server": proc.pid}
        label = f"floor w={workers} closed c={args.concurrency}"
        say(f"floor: {label} for {args.phase_duration:g}s (+{args.warmup:g}s warm-up)")
        if ghz_path:
            result = _ghz_phase(ghz_path, floor_settings, args, "closed", 0.0, sessions)
        else:
            opts = {
                "users": args.users,
                "k": args.k,
                "deadline": args.deadline,
                "duration": args.phase_duration,
                "warmup": args.warmup,
                "channels": args.channels,
                "mode": "closed",
                "concurrency": args.concurrency,
            }
            result = run_loadgen(floor_settings, opts, sessions)
        result["phase"] = label
        _say_phase(result)
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def _wait_answering(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    import grpc

    from personalization.v1 import recommender_pb2, recommender_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"floor server exited with {proc.returncode}")
            try:
                stub.Recommend(recommender_pb2.RecommendRequest(user_id="x", k=10), timeout=1.0)
                return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"floor server on {address} did not answer in {timeout_s:.0f}s")


def _compare(
    workers: int,
    python_run: list[dict[str, Any]],
    ghz_run: list[dict[str, Any]],
    floor: dict[str, Any] | None,
) -> dict[str, Any]:
    ours = _closed(ghz_run) or _closed(python_run)
    rps = ours["achieved_rps"] if ours else None
    floor_rps = floor.get("achieved_rps") if floor else None
    return {
        "workers": workers,
        "tool": ours["tool"] if ours else None,
        "closed_rps": rps,
        "closed_p99_ms": ours["latency"].get("p99_ms") if ours else None,
        "server_cpu_pct": (ours.get("cpu_pct") or {}).get("grpc server") if ours else None,
        "floor_rps": floor_rps,
        "floor_p99_ms": floor["latency"].get("p99_ms") if floor else None,
        "of_floor": round(rps / floor_rps, 2) if rps and floor_rps else None,
    }


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's closed-loop rate (and the floor's) over the first worker count's."""
    base, floor_base = rows[0]["closed_rps"], rows[0]["floor_rps"]
    for row in rows:
        row["ratio"] = round(row["closed_rps"] / base, 2) if row["closed_rps"] and base else None
        row["floor_ratio"] = (
            round(row["floor_rps"] / floor_base, 2) if row["floor_rps"] and floor_base else None
        )


def _component_pid(bench: BenchStack, name: str) -> int | None:
    from ops import stack

    for comp in (stack.FLINK_JOB, stack.WRITER):
        if comp.name == name and name in bench.started:
            return bench.component_pid(comp)
    return None


def _say_phase(r: dict[str, Any]) -> None:
    lat = r.get("latency", {})
    if not lat.get("count"):
        say(f"  {r['tool']} {r.get('phase')}: no successful requests; errors {r.get('errors')}")
        return
    say(
        f"  {r['tool']} {r.get('phase')}: {r['achieved_rps']:,.0f} rps ok, "
        f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
        f"p99.9 {lat['p999_ms']:.2f} ms, errors {r['error_count']}; cpu {r.get('cpu_pct')}"
    )
