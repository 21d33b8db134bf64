"""``personalize``: one command line for the whole platform.

    personalize up [--rate 200] [--duration 120] [--file PATH]   whole stack + live traffic
                   [--parallelism N]                         N > 1: job on N TaskManagers
    personalize down                                              stop everything `up` started
    personalize status
    personalize infra start|stop|status|reset [redis|kafka|flink|all]   default: Redis + Kafka
    personalize feast-apply                                       register feature definitions
    personalize job | writer | serve [--workers N]                one component, foreground
    personalize send [--file PATH] [--rate R] [--count N]         traffic into Kafka
                     [--speed X|max] [--keep-times]               replay pace / own event times
                     [--map event_time=ts,user_id=uid,...]        any CSV (+ --event-types,
                                                                  --time-format, --columns)
    personalize recommend USER [-k 10] | profile USER             ask the gRPC server
    personalize deploy [--cluster-up]                             submit the job to a Flink cluster
    personalize ab-results [--experiment NAME]                    A/B figures with significance
    personalize dashboard [--port P]                              live metrics dashboard, foreground
    personalize keys create --id NAME --scopes collect,recommend  new API key (printed once)
    personalize keys list | revoke --id NAME   [--file PATH]       the keys file's entries
    personalize catalog import FILE [--map F=COL,...] | similar ITEM  item catalog
    personalize history stats | compact [--keep-days N]            feature history on disk
    personalize triggers check [FILE]                             validate a trigger rule file
    personalize segments [--days N] [--top 3]                     segment sizes, clusters

Settings come from ``PZ_*`` environment variables (see personalization/settings.py).
``up`` serves with access control on: without ``serving.api_keys_file`` it makes a local
key with every scope (``ops/local_key.py``: ``<run_dir>/api_keys.json``, the key in
``<run_dir>/api_key``). ``recommend`` and ``profile`` send ``--api-key`` (default
``$PERSONALIZE_API_KEY``, else ``<run_dir>/api_key``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ops import history, segments
from ops.catalog_cli import add_commands as add_catalog_commands
from ops.local_key import API_KEY_ENV, default_api_key
from ops.trigger_rules_cli import add_commands as add_trigger_commands
from personalization.settings import Settings, load_settings


def _say(message: str) -> None:
    print(f"[personalize] {message}", flush=True)


# --- traffic ---------------------------------------------------------------------------


def traffic_source(
    settings: Settings,
    file: str | None,
    rate: float,
    seed: int,
    *,
    reader: Any = None,
    bad_rows: Any = None,
) -> Iterable[dict]:
    """Events to send: a dataset file replayed (in time order, through ``reader``, by
    default the file's detected format), or the built-in shopping simulation."""
    if file:
        from traffic.replay import iter_events

        return iter_events(file, sort_by_time=True, reader=reader, bad_rows=bad_rows)
    from traffic.generator import GeneratorConfig, TrafficGenerator

    # The simulation's own timeline, sent at exactly the requested rate: the sender
    # stamps each event with the time it is sent, so a user's sessions keep their order
    # and their relative gaps, scaled to the rate.
    config = GeneratorConfig(seed=seed, n_users=2_000, id_prefix=f"live{int(time.time())}")
    return TrafficGenerator(config).events()


class LastUser:
    """Remembers the most recent user a traffic stream mentioned (for sample recs)."""

    def __init__(self) -> None:
        self.user_id = ""

    def watch(self, events: Iterable[dict]) -> Iterator[dict]:
        for event in events:
            user = event.get("user_id")
            if user:
                self.user_id = str(user)
            yield event


class ProgressReporter:
    """Prints events/s, feature freshness and a sample recommendation while sending."""

    def __init__(self, settings: Settings, last_user: LastUser, every_s: float = 5.0) -> None:
        from confluent_kafka import Producer

        from serving.client import RecommenderClient
        from serving.online_features import UserFeatureReader

        self.settings = settings
        self.last_user = last_user
        self.every_s = every_s
        self.freshness: list[float] = []
        self._reader = UserFeatureReader(settings)
        self._producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        target = f"{settings.serving.host}:{settings.serving.port}"
        self._client = RecommenderClient(
            target,
            deadline_s=settings.serving.client_deadline_s,
            api_key=default_api_key(settings),
        )
        self._next = 0.0

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        from ops.stack import probe_freshness

        fresh = probe_freshness(self.settings, self._producer, self._reader, timeout_s=5.0)
        if fresh is not None:
            self.freshness.append(fresh)
        fresh_text = f"{fresh * 1000:.0f} ms" if fresh is not None else "> 5 s"
        line = (
            f"sent {progress.sent:>8}  {progress.interval_rate:7.0f} ev/s"
            f"  errors {progress.errors}  freshness {fresh_text}"
        )
        user = self.last_user.user_id
        if user:
            try:
                response = self._client.recommend(user, k=3)
                picks = ", ".join(f"{i.item_id} ({i.reason})" for i in response.items)
                line += f"\n    recs for {user}: {picks or '-'}"
            except Exception as exc:  # keep sending even if serving hiccups
                line += f"\n    recs for {user}: error {exc}"
        print(line, flush=True)


def send_traffic(
    settings: Settings,
    *,
    file: str | None,
    rate: float,
    duration: float | None,
    count: int | None,
    seed: int = 7,
    report: bool = True,
    speed: float = math.inf,
    keep_times: bool = False,
    reader: Any = None,
) -> Any:
    """Send traffic. ``speed``: the source's time gaps divided by it, the first event
    stamped now (``math.inf``: every event stamped when sent, gaps collapsed);
    ``keep_times``: the events' own times (paced by ``speed`` when finite), with a
    warning for those outside the job's admission window; ``reader``: an
    :class:`traffic.replay.EventReader` for ``file`` (e.g. a mapped CSV)."""
    from personalization.events import ValidationLimits
    from traffic.replay import BadRows
    from traffic.sender import AdmissionCheck, TrafficSender

    last_user = LastUser()
    bad_rows = BadRows()
    events = traffic_source(settings, file, rate, seed, reader=reader, bad_rows=bad_rows)
    admission = None
    if keep_times:
        admission = AdmissionCheck(
            ValidationLimits.from_settings(settings.features), warn=lambda m: _say(f"warning: {m}")
        )
        events = admission.watch(events)
    events = last_user.watch(events)
    reporter = ProgressReporter(settings, last_user) if report else None
    sender = TrafficSender(
        settings,
        rate=rate,
        rewrite_time_to_now=not keep_times,
        keep_times=keep_times,
        speed=speed,
        max_events=count,
        max_duration_s=duration,
        progress=reporter,
        # A replay re-timed to now counts again; a backfill of the same times and ids
        # is the same events (the job dedupes them).
        event_id_suffix=f"-{int(time.time())}" if file and not keep_times else "",
    )
    stats = sender.send(events)
    _say(
        f"sent {stats.sent} events in {stats.elapsed_s:.1f}s ({stats.rate:.0f}/s), "
        f"delivered {stats.delivered}, errors {stats.errors}"
    )
    if bad_rows.count:
        _say(f"{file}: skipped {bad_rows.summary()}")
    if bad_rows.skipped:
        skipped = ", ".join(f"{t} {n}" for t, n in bad_rows.skipped.most_common())
        _say(f"{file}: skipped on purpose (event types mapped to -): {skipped}")
    if admission is not None and admission.refused:
        _say(
            f"warning: {sum(admission.refused.values())} of {admission.checked} events are "
            f"outside the admission window ({dict(admission.refused)}) and go to "
            f"{settings.kafka.dlq_topic}; widen it with PZ_FEATURES__MAX_EVENT_AGE_S "
            "(the job's setting, restart it) or replay without --keep-times"
        )
    if reporter and reporter.freshness:
        ordered = sorted(reporter.freshness)
        _say(
            f"feature freshness over {len(ordered)} probes: "
            f"p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
        )
    return stats


# --- commands --------------------------------------------------------------------------


def with_parallelism(settings: Settings, parallelism: int | None) -> Settings:
    """``settings`` with ``flink.parallelism`` replaced (None: as configured, e.g. by
    ``PZ_FLINK__PARALLELISM``)."""
    from ops import stack

    if parallelism is not None and parallelism < 1:
        raise SystemExit(f"--parallelism must be at least 1, not {parallelism}")
    return stack.with_job_layout(settings, parallelism)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from ops import stack

    settings = with_parallelism(settings, args.parallelism)
    settings = stack.with_job_layout(settings, separate_item_side=args.separate_item_side)
    n = settings.flink.parallelism
    if n > settings.kafka.partitions:
        _say(
            f"warning: parallelism {n} > {settings.kafka.partitions} Kafka partitions: "
            "some source subtasks get no partition (PZ_KAFKA__PARTITIONS)"
        )
    _say(f"flink job: parallelism {n} ({stack.job_layout(settings)})")
    settings = _local_access(settings)
    started = time.monotonic()
    stack.start_all(settings, _say)
    _say(
        f"stack is up in {time.monotonic() - started:.0f}s; gRPC on "
        f"{settings.serving.host}:{settings.serving.port}"
    )
    _say(f"dashboard: {stack.dashboard_url(settings)}")
    for name, url in stack.metrics_urls(settings).items():
        _say(f"metrics of {name}: {url}")
    if settings.serving.workers > 1:
        ports = ", ".join(str(p) for p in settings.serving_metrics_ports)
        _say(f"{settings.serving.workers} serving workers, metrics on ports {ports}")
    if args.no_traffic:
        return 0
    source = args.file or "built-in shopping simulation"
    _say(
        f"sending live traffic from {source} at {args.rate:g} ev/s "
        f"for {args.duration:g}s (Ctrl-C stops the traffic, `personalize down` the stack)"
    )
    try:
        send_traffic(
            settings, file=args.file, rate=args.rate, duration=args.duration, count=args.count
        )
    except KeyboardInterrupt:
        _say("traffic stopped")
    return 0


def _local_access(settings: Settings) -> Settings:
    """``up``'s settings with access control on: the local key (ops/local_key.py), made
    and shown once if needed, unless ``serving.api_keys_file`` names the operator's file."""
    from ops.local_key import ensure_local_access

    local = ensure_local_access(settings)
    if local is None:
        _say(f"access control: keys from {settings.serving.api_keys_file}")
        return settings
    if local.created:
        _say(f"new local API key (every scope; shown once, kept in {local.key_file}):")
        print(f"    {local.key}", flush=True)
    _say(
        f"access control on ({local.keys_file}): `personalize recommend|profile` use "
        f"{local.key_file}; other clients send 'x-api-key: <key>', e.g. "
        f"export {API_KEY_ENV}=$(cat {local.key_file})"
    )
    return local.settings


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from ops import stack

    stack.stop_all(settings, _say)
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from ops import stack

    for name, state in stack.status(settings).items():
        print(f"{name:22} {state}")
    return 0


# The earlier form of the command, `personalize infra up|down`.
INFRA_ALIASES = {"up": "start", "down": "stop"}
# ops.infra.registry.SERVICES' names, spelled out so that building the parser imports
# no service module (tests/unit/test_ops_service.py checks that they agree).
INFRA_SERVICE_NAMES = ("redis", "redis-cluster", "kafka", "flink")


def cmd_infra(settings: Settings, args: argparse.Namespace) -> int:
    from ops import stack
    from ops.infra.registry import select
    from ops.infra.service import reset

    services = select(args.service)
    action = INFRA_ALIASES.get(args.action, args.action)
    if action == "start":
        stack.start_infra(settings, _say, services)
    elif action == "stop":
        for service in reversed(services):
            _say(f"{service.name}: {'stopped' if service.stop(settings) else 'not running'}")
    elif action == "reset":
        if args.service is None:
            _say("infra reset deletes data: name the service (redis, kafka, flink or all)")
            return 2
        for service in reversed(services):
            reset(service, settings)
            _say(f"{service.name}: stopped, {service.data_dir(settings)} deleted")
    for service in services:
        print(service.status(settings), flush=True)
    return 0


def cmd_feast_apply(settings: Settings, args: argparse.Namespace) -> int:
    from ops import stack

    print(stack.feast_apply(settings))
    return 0


def cmd_job(settings: Settings, args: argparse.Namespace) -> int:
    from flink_jobs import user_features_job

    user_features_job.run(settings, restore=args.restore)
    return 0


def cmd_writer(settings: Settings, args: argparse.Namespace) -> int:
    from writer import process as online_store

    online_store.main()
    return 0


def cmd_dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from dispatcher import process as dispatcher

    dispatcher.main([])
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving import server

    return server.run(settings, args.workers)


def parse_speed(text: str) -> float:
    """``--speed``: a factor > 0 (1 = real time) or ``max`` (gaps collapsed)."""
    if text.strip().lower() in ("max", "inf"):
        return math.inf
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number > 0 or max") from None
    if not (speed > 0 and math.isfinite(speed)):
        raise argparse.ArgumentTypeError(f"{text!r}: a number > 0 or max")
    return speed


def send_reader(args: argparse.Namespace) -> Any:
    """The generic CSV reader when ``--map`` is given (None: the file's own format)."""
    csv_options = (args.event_types, args.time_format, args.columns, args.delimiter)
    if not args.map:
        if any(csv_options):
            raise SystemExit("--event-types, --time-format, --columns and --delimiter need --map")
        return None
    if not args.file:
        raise SystemExit("--map needs --file")
    from traffic.replay import CsvMapping, MappedCsvReader

    try:
        mapping = CsvMapping.parse(
            args.map,
            event_types=args.event_types or "",
            time_format=args.time_format or "auto",
            columns=args.columns or "",
            delimiter=args.delimiter or "",
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return MappedCsvReader(mapping)


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    reader = send_reader(args)
    rate = args.rate
    if rate is None:  # paced by the file's own gaps: no cap unless asked
        rate = 0.0 if math.isfinite(args.speed) else 200.0
    try:
        stats = send_traffic(
            settings,
            file=args.file,
            rate=rate,
            duration=args.duration,
            count=args.count,
            report=not args.quiet,
            speed=args.speed,
            keep_times=args.keep_times,
            reader=reader,
        )
    except ValueError as exc:  # a file that cannot be read as its format / mapping
        raise SystemExit(f"personalize send: {exc}") from None
    return 0 if stats.errors == 0 else 1


def cmd_recommend(settings: Settings, args: argparse.Namespace) -> int:
    from serving.client import RecommenderClient

    target = f"{settings.serving.host}:{settings.serving.port}"
    deadline = settings.serving.client_deadline_s
    api_key = args.api_key or default_api_key(settings)
    with RecommenderClient(target, deadline_s=deadline, api_key=api_key) as client:
        context = {"country": args.country, "device": args.device}
        response = client.recommend(args.user, k=args.k, context=context)
    print(
        f"strategy={response.strategy} personalized={response.personalized} "
        f"fallback={response.fallback_reason or '-'} id={response.recommendation_id}"
    )
    for rank, item in enumerate(response.items, 1):
        print(f"{rank:3}. {item.item_id:20} {item.score:8.4f}  {item.category:12} {item.reason}")
    return 0


def cmd_profile(settings: Settings, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToJson

    from serving.client import RecommenderClient

    target = f"{settings.serving.host}:{settings.serving.port}"
    deadline = settings.serving.client_deadline_s
    api_key = args.api_key or default_api_key(settings)
    with RecommenderClient(target, deadline_s=deadline, api_key=api_key) as client:
        print(MessageToJson(client.get_user_profile(args.user)))
    return 0


def cmd_ab_results(settings: Settings, args: argparse.Namespace) -> int:
    from analysis import ab_report

    records = ab_report.read_outcomes(settings, idle_s=args.idle)
    by_experiment = ab_report.totals_by_variant(records)
    if not by_experiment:
        _say(f"no attributed exposures on {settings.kafka.ab_outcomes_topic} yet")
        return 1
    for experiment, variants in sorted(by_experiment.items()):
        if args.experiment and experiment != args.experiment:
            continue
        print(ab_report.format_report(experiment, ab_report.report(variants, args.control)))
    return 0


def cmd_deploy(settings: Settings, args: argparse.Namespace) -> int:
    from ops.infra import flink_cluster

    if args.cluster_up:
        flink_cluster.start(settings)  # settings.flink.taskmanagers TaskManagers x 1 slot
    job_id = flink_cluster.submit_python_job(
        settings,
        "flink_jobs.user_features_job",
        ["--settings-json", settings.model_dump_json(), "--restore", args.restore],
    )
    _say(f"submitted job {job_id} to http://127.0.0.1:{settings.flink.rest_port}")
    return 0


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from dashboard.app import serve

    serve(settings, port=args.port, block=True)
    return 0


def cmd_model(settings: Settings, args: argparse.Namespace) -> int:
    """List, roll back or promote versions of a model in the registry."""
    from personalization.model_registry import ModelRegistry, UnknownVersion
    from personalization.redis_client import redis_client

    client = redis_client(settings.redis, request_path=False, timeout_s=5.0)
    registry = ModelRegistry(client, settings.feast.project)
    try:
        if args.action == "rollback":
            moved = registry.rollback(args.model, args.version or None)
            _say(f"{args.model}: {moved.version} is active and pinned (promote to unpin)")
        elif args.action == "promote":
            moved = registry.promote(args.model, args.version or None)
            _say(f"{args.model}: {moved.version} is active; new versions are followed")
    except UnknownVersion as exc:
        _say(f"error: {exc.args[0]}")
        return 2
    pointer = registry.active(args.model)
    versions = registry.versions(args.model)
    if not versions:
        _say(f"{args.model}: no versions published yet")
        return 1 if args.action == "list" else 0
    print(f"{'':2}{'version':<14}{'created (UTC)':<21}{'examples':>10}  metrics")
    for v in versions:
        mark = "*" if pointer is not None and pointer.version == v.version else " "
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created_ms / 1000))
        figures = " ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items()))
        print(f"{mark:2}{v.version:<14}{created:<21}{v.examples:>10}  {figures}")
    if pointer is not None:
        state = "pinned" if pointer.pinned else "following new versions"
        print(f"active: {pointer.version} ({state}, by {pointer.by})")
    return 0


def keys_file(settings: Settings, file: str | None) -> Path:
    """``--file``, else ``serving.api_keys_file``, else ``<run_dir>/api_keys.json``."""
    return Path(file or settings.serving.api_keys_file or settings.run_path / "api_keys.json")


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Create, list or revoke API keys; the file holds hashes only (personalization/access.py)."""
    from personalization import access

    path = keys_file(settings, args.file)

    def note(message: str) -> None:  # stderr: stdout carries only the new key
        print(f"[personalize] {message}", file=sys.stderr, flush=True)

    try:
        if args.action == "create":
            if not args.id or not args.scopes:
                note("keys create needs --id NAME and --scopes SCOPE[,SCOPE...]")
                return 2
            created: list[str] = []

            def add(keys: tuple[access.ApiKey, ...]) -> tuple[access.ApiKey, ...]:
                updated, key = access.create_key(keys, args.id, args.scopes)
                created.append(key)
                return updated

            access.update_keys_file(path, add)
            print(created[0], flush=True)
            note(f"key {args.id!r} written to {path} (as its hash; the key is shown only now)")
            if str(path) != settings.serving.api_keys_file:
                note(
                    f"serving reads it with PZ_SERVING__API_KEYS_FILE={path}"
                    + (" (`personalize up` does by itself)" if not args.file else "")
                )
        elif args.action == "revoke":
            if not args.id:
                note("keys revoke needs --id NAME")
                return 2
            access.update_keys_file(path, lambda keys: access.revoke_key(keys, args.id))
            note(f"key {args.id!r} revoked in {path} (servers drop it within seconds)")
        else:
            keys = access.load_keys_file(path) if path.exists() else ()
            print(f"{'id':<24}{'created (UTC)':<22}{'hash':<24}scopes")
            for key in keys:
                print(
                    f"{key.id:<24}{key.created or '-':<22}{key.hash[:19] + '...':<24}"
                    f"{','.join(sorted(key.scopes))}"
                )
            note(f"{len(keys)} keys in {path}")
    except ValueError as exc:  # KeysFileError included: it names the file and entry
        note(f"error: {exc}")
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personalize", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def traffic_args(p: argparse.ArgumentParser, rate: float, duration: float | None) -> None:
        p.add_argument("--file", help="replay a Taobao CSV, MovieLens u.data or JSON lines")
        p.add_argument("--rate", type=float, default=rate, help="events/s (0 = unlimited)")
        p.add_argument("--duration", type=float, default=duration, help="seconds of traffic")
        p.add_argument("--count", type=int, default=None, help="stop after N events")

    up = sub.add_parser("up", help="start the whole stack and send live traffic")
    traffic_args(up, 200.0, 120.0)
    up.add_argument("--no-traffic", action="store_true", help="only start the stack")
    up.add_argument(
        "--parallelism",
        type=int,
        default=None,
        help="job parallelism (default flink.parallelism, PZ_FLINK__PARALLELISM); 1 = local "
        "MiniCluster, N > 1 = local standalone cluster with N TaskManagers x 1 slot",
    )
    up.add_argument(
        "--separate-item-side",
        action="store_true",
        help="the job's item side in TaskManagers of its own (flink.separate_item_side, "
        "PZ_FLINK__SEPARATE_ITEM_SIDE): 2 x parallelism TaskManagers, each side its own "
        "Python interpreter; also at parallelism 1",
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="what is running").set_defaults(func=cmd_status)
    infra = sub.add_parser(
        "infra", help="start, stop, probe or reset Redis, Kafka, the Flink cluster"
    )
    infra.add_argument(
        "action",
        choices=("start", "stop", "status", "reset", *INFRA_ALIASES),
        help="reset = stop and delete the data; up/down = start/stop",
    )
    infra.add_argument(
        "service",
        nargs="?",
        choices=(*INFRA_SERVICE_NAMES, "all"),
        help="default: redis and kafka (what `personalize up` runs on)",
    )
    infra.set_defaults(func=cmd_infra)
    sub.add_parser("feast-apply", help="feast apply with these settings").set_defaults(
        func=cmd_feast_apply
    )
    job = sub.add_parser("job", help="run the Flink job in the foreground (MiniCluster)")
    job.add_argument("--restore", default="latest", help="latest | none | checkpoint path")
    job.set_defaults(func=cmd_job)
    sub.add_parser("writer", help="run the online-store writer").set_defaults(func=cmd_writer)
    sub.add_parser(
        "dispatch", help="run the trigger dispatcher (webhooks, Triggers.Subscribe)"
    ).set_defaults(func=cmd_dispatch)
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="serving processes sharing the port via SO_REUSEPORT, metrics on "
        "metrics.serving_port + index (default: serving.workers, PZ_SERVING__WORKERS)",
    )
    serve.set_defaults(func=cmd_serve)
    send = sub.add_parser("send", help="send traffic to Kafka")
    traffic_args(send, 200.0, None)
    send.set_defaults(rate=None)  # 200 ev/s, or no cap with a finite --speed
    send.add_argument("--quiet", action="store_true", help="no progress probes")
    send.add_argument(
        "--speed",
        type=parse_speed,
        default=math.inf,
        help="replay the events' time gaps divided by X (1 = real time), the first event "
        "stamped now; max (default) = every event stamped when sent, gaps collapsed",
    )
    send.add_argument(
        "--keep-times",
        action="store_true",
        help="send the events' own times (backfill); warns about events outside the "
        "job's admission window (features.max_event_age_s)",
    )
    send.add_argument(
        "--map",
        help="read --file as a CSV with this column mapping: "
        "event_time=COL,user_id=COL,event_type=COL[,item_id=COL,category=COL,price=COL,"
        "quantity=COL,event_id=COL,device=COL,country=COL,...,properties.NAME=COL]",
    )
    send.add_argument(
        "--event-types",
        help="with --map: source values to event types, e.g. pv=product_view,buy=purchase"
        ",search=- (- skips the row)",
    )
    send.add_argument(
        "--time-format",
        help="with --map: auto (default), s, ms, iso or a strptime pattern",
    )
    send.add_argument(
        "--columns", help="with --map: the file has no header; these are its column names"
    )
    send.add_argument("--delimiter", help="with --map: , ; | or \\t (default: sniffed)")
    send.set_defaults(func=cmd_send)
    rec = sub.add_parser("recommend", help="ask for recommendations")
    rec.add_argument("user")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--country", default="", help="request context: country (e.g. DE)")
    rec.add_argument("--device", default="", help="request context: device (e.g. mobile)")
    rec.set_defaults(func=cmd_recommend)
    prof = sub.add_parser("profile", help="show a user's online features")
    prof.add_argument("user")
    prof.set_defaults(func=cmd_profile)
    for client_command in (rec, prof):
        client_command.add_argument(
            "--api-key",
            default=os.environ.get(API_KEY_ENV, ""),
            help=f"API key for a server with access control on (default ${API_KEY_ENV}, "
            "else the local key `personalize up` wrote to <run_dir>/api_key)",
        )
    ab = sub.add_parser("ab-results", help="per-variant A/B figures with significance tests")
    ab.add_argument("--experiment", default="", help="only this experiment")
    ab.add_argument("--control", default=None, help="variant to compare with")
    ab.add_argument("--idle", type=float, default=3.0, help="stop reading after idle seconds")
    ab.set_defaults(func=cmd_ab_results)
    deploy = sub.add_parser("deploy", help="submit the job to a standalone Flink cluster")
    deploy.add_argument("--cluster-up", action="store_true", help="start a local cluster first")
    deploy.add_argument("--restore", default="none", help="latest | none | checkpoint path")
    deploy.set_defaults(func=cmd_deploy)
    dash = sub.add_parser("dashboard", help="run the live metrics dashboard in the foreground")
    dash.add_argument("--port", type=int, default=None, help="default: metrics.dashboard_port")
    dash.set_defaults(func=cmd_dashboard)
    model = sub.add_parser("model", help="model versions: list, rollback, promote")
    model.add_argument("action", choices=("list", "rollback", "promote"))
    model.add_argument("--model", default="propensity", help="model name (default propensity)")
    model.add_argument(
        "--version", default="", help="rollback: default the previous; promote: the newest"
    )
    model.set_defaults(func=cmd_model)
    keys = sub.add_parser("keys", help="API keys of the gRPC services: create, list, revoke")
    keys.add_argument("action", choices=("create", "list", "revoke"))
    keys.add_argument("--id", default="", help="the key's name (create, revoke)")
    keys.add_argument(
        "--scopes",
        default="",
        help="create: comma-separated, of collect, recommend, profile:read, admin",
    )
    keys.add_argument(
        "--file",
        default=None,
        help="keys file (default serving.api_keys_file, else <run_dir>/api_keys.json)",
    )
    keys.set_defaults(func=cmd_keys)
    add_catalog_commands(sub)
    history.add_commands(sub)
    add_trigger_commands(sub)
    segments.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(load_settings(), args))


if __name__ == "__main__":
    sys.exit(main())
