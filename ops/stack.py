"""The local stack: Redis, Kafka, the Feast registry, the Flink job, the online-store
writer, the gRPC server, the trigger dispatcher and the metrics dashboard, started and
stopped as one.

The job runs where ``settings.flink.parallelism`` says: at 1 in a local MiniCluster
(the ``flink-job`` component, one process), above 1 on the local standalone cluster
(``ops.infra.flink_cluster``) with that many TaskManagers of one slot each, submitted
with ``flink run`` as ``personalize deploy`` does (:func:`start_job`). In thread mode
the slots of one TaskManager share one Python interpreter, so a MiniCluster (one JVM)
cannot use a second core; separate TaskManager processes can. With
``flink.separate_item_side`` the job's item side runs in TaskManagers of its own: the
cluster, twice as many TaskManagers, also at parallelism 1.

Every process gets the launcher's resolved settings through ``PZ_SETTINGS_JSON``, so a
stack started with overrides (ports, topics, run dir) is consistent end to end.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Producer

from ops.infra import flink_cluster, jars
from ops.infra.flink_cluster import FLINK
from ops.infra.kafka_broker import KAFKA
from ops.infra.processes import ManagedProcess, lower_session_priority, wait_until
from ops.infra.registry import STACK_SERVICES
from ops.infra.service import Service
from personalization import offline_store
from personalization.privacy import pseudonymizer
from personalization.settings import PROJECT_ROOT, SETTINGS_JSON_ENV, Settings

log = logging.getLogger(__name__)

PROBE_USER = "__pz_probe__"


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    args: tuple[str, ...] = ()

    def process(self, settings: Settings) -> ManagedProcess:
        return ManagedProcess(self.name, settings.run_path, markers=(self.module,))

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


FLINK_JOB = Component("flink-job", "flink_jobs.user_features_job", ("--restore", "latest"))
WRITER = Component("online-store-writer", "writer.process")
SERVER = Component("grpc-server", "serving.server")
# Delivers triggers to the webhooks of settings.dispatcher, serves Triggers.Subscribe.
DISPATCHER = Component("trigger-dispatcher", "dispatcher")
# Scrapes the job, writer and serving /metrics endpoints (settings.metrics) and plots them.
DASHBOARD = Component("dashboard", "dashboard")
APP_COMPONENTS = (FLINK_JOB, WRITER, SERVER, DISPATCHER, DASHBOARD)


def child_env(settings: Settings, component: str = "") -> dict[str, str]:
    # Importing Feast points PROMETHEUS_MULTIPROCESS_DIR at a temp dir of the importing
    # process; a child inheriting it crashes once that process is gone. Each component
    # gets a directory of its own under the run dir instead.
    metrics_dir = settings.run_path / "prometheus" / (component or "default")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    return {
        SETTINGS_JSON_ENV: settings.model_dump_json(),
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROCESS_DIR": str(metrics_dir),
    }


def ensure_offline_placeholders(settings: Settings) -> None:
    """Feast validates that batch sources exist; give it empty typed parquet files."""
    from feature_repo.features import ENTITY_OF_VIEW, FEATURE_VIEWS

    data_dir = settings.feature_repo_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, view in FEATURE_VIEWS.items():
        path = data_dir / f"{name}.parquet"
        if path.exists():
            continue
        join_key = ENTITY_OF_VIEW[name]
        schema = pa.schema(
            [
                pa.field(join_key, pa.string()),
                pa.field("event_timestamp", pa.timestamp("us", "UTC")),
            ]
            + [pa.field(f.name, pa.string()) for f in view.features]
        )
        pq.write_table(schema.empty_table(), path)


def feast_apply(settings: Settings) -> str:
    """``feast apply`` on the feature repo with settings-derived configuration."""
    ensure_offline_placeholders(settings)
    # The FileSources of the views the job computes: the feature history's folders.
    offline_store.ensure_layout(settings.history_path)
    settings.registry_file.parent.mkdir(parents=True, exist_ok=True)
    feast_cli = PROJECT_ROOT / ".venv" / "bin" / "feast"
    cmd = [str(feast_cli)] if feast_cli.exists() else [sys.executable, "-m", "feast.cli.cli"]
    env = {**_os_environ(), **settings.feast_env()}
    done = subprocess.run(
        [*cmd, "-c", str(settings.feature_repo_path), "apply"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _os_environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def start_infra(
    settings: Settings,
    say: Callable[[str], None] = print,
    services: Sequence[Service] = STACK_SERVICES,
) -> None:
    """Start ``services`` in order (default: Redis and Kafka with its topics)."""
    if KAFKA in services:
        # A first run fetches them with Maven, which takes minutes: say so first.
        say("jars: checking the Kafka broker and Flink connector jars")
        jars.ensure_jars(settings)
    for service in services:
        say(f"{service.name}: {service.address(settings)}")
        service.start(settings)


# The CPU priority of each component (settings.priority; PrioritySettings says why).
NICENESS: dict[str, Callable[[Settings], int]] = {
    FLINK_JOB.name: lambda s: s.priority.job,
    WRITER.name: lambda s: s.priority.writer,
    SERVER.name: lambda s: s.priority.serving,
    DISPATCHER.name: lambda s: s.priority.dispatcher,
    DASHBOARD.name: lambda s: s.priority.dashboard,
}


def niced(command: list[str], niceness: int) -> list[str]:
    """``command`` run at CPU priority ``niceness`` (``nice`` execs it: same pid, and the
    JVM a MiniCluster job starts inherits it)."""
    return ["nice", "-n", str(niceness), *command] if niceness > 0 else command


def start_component(settings: Settings, component: Component) -> int:
    niceness = NICENESS.get(component.name, lambda _: 0)(settings)
    pid = component.process(settings).start(
        niced(component.command(), niceness),
        env=child_env(settings, component.name),
        cwd=PROJECT_ROOT,
    )
    # Its own session is its own scheduling group: the group's priority is what counts.
    lower_session_priority(pid, niceness)
    return pid


def with_job_layout(
    settings: Settings, parallelism: int | None = None, separate_item_side: bool = False
) -> Settings:
    """``settings`` with the job's parallelism replaced (None: as configured, e.g. by
    ``PZ_FLINK__PARALLELISM``) and the item side apart when asked (a setting already on
    stays on); the same object when nothing changes."""
    f = settings.flink
    update: dict[str, Any] = {}
    if parallelism is not None and parallelism != f.parallelism:
        update["parallelism"] = parallelism
    if separate_item_side and not f.separate_item_side:
        update["separate_item_side"] = True
    if not update:
        return settings
    return settings.model_copy(update={"flink": f.model_copy(update=update)})


def job_layout(settings: Settings) -> str:
    """Where the job runs, in words (``personalize up``, the benches' reports)."""
    f = settings.flink
    if not f.on_local_cluster:
        return "MiniCluster (one JVM)"
    apart = ", the item side in TaskManagers of its own" if f.separate_item_side else ""
    return f"standalone cluster, {f.taskmanagers} TaskManagers x 1 slot{apart}"


def on_cluster(settings: Settings) -> bool:
    """Whether the job runs on the local standalone cluster (parallelism > 1, or the
    item side apart)."""
    return settings.flink.on_local_cluster


def cluster_jobs(settings: Settings) -> list[dict[str, Any]]:
    """This stack's jobs on the local cluster that are not terminal (none if it is down)."""
    if flink_cluster.overview(settings) is None:
        return []
    return [
        j
        for j in flink_cluster.list_jobs(settings)
        if j.get("name") == settings.flink.job_name
        and j.get("state") not in flink_cluster.TERMINAL_STATES
    ]


def start_job(settings: Settings, say: Callable[[str], None] = print) -> str:
    """The job on the standalone cluster with ``settings.flink.taskmanagers`` TaskManagers
    x 1 slot, resuming from the newest retained checkpoint (as the MiniCluster job does;
    keyed state is rescaled to the new parallelism within ``flink.max_parallelism``).
    A job of this stack already running there is kept. Returns its job id."""
    n = settings.flink.parallelism
    tms = settings.flink.taskmanagers
    say(f"flink cluster: {tms} taskmanager(s) x 1 slot at {flink_cluster.rest_url(settings)}")
    flink_cluster.start(settings, taskmanagers=tms)
    running = cluster_jobs(settings)
    if running:
        say(f"{FLINK_JOB.name}: job {running[0]['jid']} already on the cluster")
        return str(running[0]["jid"])
    job_id = flink_cluster.submit_python_job(
        settings,
        FLINK_JOB.module,
        ["--settings-json", settings.model_dump_json(), *FLINK_JOB.args],
        parallelism=n,
    )
    say(f"{FLINK_JOB.name}: job {job_id} on the cluster, parallelism {n}")
    return job_id


def start_all(settings: Settings, say: Callable[[str], None] = print) -> None:
    start_infra(settings, say)
    say("feast apply")
    feast_apply(settings)
    for component in APP_COMPONENTS:
        if component is FLINK_JOB and on_cluster(settings):
            start_job(settings, say)
            continue
        pid = start_component(settings, component)
        say(f"{component.name}: pid {pid} (log {component.process(settings).logfile})")
    say("waiting for the gRPC server and the pipeline to answer")
    wait_server_ready(settings)
    wait_pipeline_ready(settings)
    wait_dashboard_ready(settings)


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.metrics.host}:{settings.metrics.dashboard_port}/"


def metrics_urls(settings: Settings) -> dict[str, str]:
    """Component name -> its Prometheus endpoint (switched-on ones only)."""
    m = settings.metrics
    ports = {FLINK_JOB.name: m.job_port, WRITER.name: m.writer_port, SERVER.name: m.serving_port}
    return {name: f"http://{m.host}:{port}/metrics" for name, port in ports.items() if port > 0}


def job_metrics_urls(settings: Settings) -> list[str]:
    """The job's Prometheus endpoints: one per TaskManager of the local cluster
    (``MetricsSettings.taskmanager_job_port``; the user and item sides may be in different
    ones), else the MiniCluster's one."""
    m = settings.metrics
    n = max(1, settings.flink.taskmanagers)
    ports = [m.taskmanager_job_port(index) for index in range(n)]
    return [f"http://{m.host}:{port}/metrics" for port in ports if port > 0]


def wait_dashboard_ready(settings: Settings, timeout_s: float = 30.0) -> None:
    import urllib.request

    url = dashboard_url(settings) + "healthz"

    def answering() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    _wait_or_explain(answering, timeout_s, "the dashboard to answer", settings, DASHBOARD)


def stop_all(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the components, the job on the local cluster (cancelled: its checkpoints are
    retained for the next ``up``) and the cluster, then Redis and Kafka."""
    for component in reversed(APP_COMPONENTS):
        if component.process(settings).stop():
            say(f"{component.name}: stopped")
        if component is FLINK_JOB:
            for job in cluster_jobs(settings):
                flink_cluster.cancel_job(settings, str(job["jid"]))
                say(f"{FLINK_JOB.name}: job {job['jid']} on the cluster cancelled")
            if FLINK.stop(settings):
                say(f"{FLINK.name}: stopped")
    for service in reversed(STACK_SERVICES):
        if service.stop(settings):
            say(f"{service.name}: stopped")


def status(settings: Settings) -> dict[str, str]:
    out = {service.name: str(service.status(settings)) for service in (*STACK_SERVICES, FLINK)}
    for component in APP_COMPONENTS:
        pid = component.process(settings).pid()
        out[component.name] = f"running (pid {pid})" if pid else "stopped"
        if component is FLINK_JOB and not pid:
            jobs = cluster_jobs(settings)
            if jobs:
                out[component.name] = "on the cluster: " + ", ".join(
                    f"job {j['jid']} {j['state']}" for j in jobs
                )
    return out


def wait_server_ready(settings: Settings, timeout_s: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{settings.serving.host}:{settings.serving.port}"

    def serving() -> bool:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    _wait_or_explain(serving, timeout_s, "the gRPC server to serve", settings, SERVER)


def probe_event(now_ms: int) -> dict[str, object]:
    return {
        "event_id": f"probe-{uuid.uuid4().hex}",
        "user_id": PROBE_USER,
        "event_type": "page_view",
        "event_time": now_ms,
        "context": {"page": "/__probe"},
    }


def probe_freshness(
    settings: Settings, producer: Producer, reader: Any, timeout_s: float = 10.0
) -> float | None:
    """Produce one probe event; seconds until its features are readable, None if not
    within ``timeout_s``. Measures the whole write path: Kafka, Flink, writer, Redis."""
    sent_at = time.time()
    event = probe_event(int(sent_at * 1000))
    producer.produce(
        settings.kafka.clickstream_topic, json.dumps(event).encode(), PROBE_USER.encode()
    )
    producer.flush(timeout_s)
    # The job stores the probe, like every user, under its pseudonym (privacy.hmac_secret).
    stored = pseudonymizer(settings.privacy.hmac_secret)(PROBE_USER)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        features = _read_quietly(reader, stored)
        if features is not None and features.last_seen_ms >= event["event_time"]:
            return time.time() - sent_at
        time.sleep(0.005)
    return None


def wait_pipeline_ready(settings: Settings, timeout_s: float = 180.0) -> float:
    """Send probe events until one's features are readable; return its latency (s).

    The honest readiness check of the whole write path, used before traffic starts.
    """
    from serving.online_features import UserFeatureReader

    reader = UserFeatureReader(settings)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latency = probe_freshness(settings, producer, reader, timeout_s=10.0)
        if latency is not None:
            return latency
    tails = "\n".join(
        f"--- {c.name} ---\n{c.process(settings).log_tail(15)}" for c in APP_COMPONENTS
    )
    raise TimeoutError(f"pipeline did not deliver a probe in {timeout_s:.0f}s\n{tails}")


def _read_quietly(reader: Any, user_id: str) -> Any:
    try:
        return reader.read(user_id)
    except Exception:  # the store may still be starting or briefly unavailable
        return None


def _wait_or_explain(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    settings: Settings,
    component: Component,
) -> None:
    try:
        wait_until(predicate, timeout_s, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{component.process(settings).log_tail(30)}") from None
