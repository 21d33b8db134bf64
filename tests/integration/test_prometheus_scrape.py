"""A real Prometheus (Debian's package) scraping a running test stack: every PromQL
expression of the Grafana dashboard and of the recording rules returns data, every
series an alert reads exists, and Prometheus evaluates every rule without an error.

The stack is the session's (the Flink job on a MiniCluster, the writer, the gRPC
server) plus a second gRPC server with an A/B experiment, so the A/B families exist.
The scrape config is ops/prometheus/prometheus.yml with the session's ports in place of
the defaults and a 1 s interval; the rules are ops/prometheus/rules/*.yml as they are.

Left out, and why (each is checked by promtool against synthetic series in
ops/prometheus/tests/rules_test.yml instead):
- Flink's own metrics (restarts, checkpoints): its Prometheus reporter is enabled in
  docker-compose.yml only, not on the local MiniCluster;
- ``pz_model_drift_alarms_total``: the family exists once a drift detector raises an
  alarm, which steady test traffic does not cause.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from ops.infra.processes import free_port
from personalization.settings import MetricsSettings, Settings
from serving.client import RecommenderClient
from tests import promql
from tests.fixtures_pipeline import extra_server
from tests.system_tools import require_tool
from traffic.sender import TrafficSender

pytestmark = pytest.mark.integration

# Counters with labels have no series until they first count: drift alarms and consumer
# replacements do not happen in this test.
ABSENT_IN_TEST_STACK = promql.FLINK_REPORTER_METRICS | {
    "pz_model_drift_alarms_total",
    "pz_kafka_consumer_replacements_total",
}
RATE_INTERVAL = "30s"  # stands for Grafana's $__rate_interval (scrapes are 1 s apart)
EXPERIMENTS = """
experiments:
  - name: prom-ab
    salt: prom
    variants:
      - {name: control, strategy: blend_v1, weight: 50}
      - {name: hybrid, strategy: hybrid_v1, weight: 50}
"""
DATA_TIMEOUT_S = 100.0
TRAFFIC_DEADLINE_S = 10.0  # per call; see Traffic._ask


@pytest.fixture(scope="module")
def ab_server(
    grpc_server: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    folder: Path = tmp_path_factory.mktemp("prom-ab")
    (folder / "experiments.yaml").write_text(EXPERIMENTS)
    experiments = {"experiments_file": str(folder / "experiments.yaml")}
    with extra_server(grpc_server, "grpc-server-prom-ab", serving=experiments) as settings:
        yield settings


def scrape_config(settings: Settings, ab: Settings, rules_dir: Path) -> dict[str, Any]:
    """ops/prometheus/prometheus.yml with the session's ports and a 1 s interval."""
    config: dict[str, Any] = yaml.safe_load(promql.LOCAL_CONFIG.read_text())
    defaults = MetricsSettings()
    ports = {
        f"{defaults.host}:{defaults.job_port}": [settings.metrics.job_port],
        f"{defaults.host}:{defaults.writer_port}": [settings.metrics.writer_port],
        f"{defaults.host}:{defaults.serving_port}": [
            settings.metrics.serving_port,
            ab.metrics.serving_port,
        ],
    }
    # Processes the session's stack does not run (the trigger dispatcher) are not
    # scraped: their jobs are dropped, and no rule reads their series.
    config["scrape_configs"] = [
        job
        for job in config["scrape_configs"]
        if all(t in ports for static in job["static_configs"] for t in static["targets"])
    ]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [
                f"{settings.metrics.host}:{port}"
                for target in static["targets"]
                for port in ports[target]
            ]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_dir / Path(f).name) for f in config["rule_files"]]
    return config


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(
    grpc_server: Settings, ab_server: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    folder: Path = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    rules_dir = promql.RULE_FILES[0].parent
    config.write_text(yaml.safe_dump(scrape_config(grpc_server, ab_server, rules_dir)))
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class Traffic:
    """Events into Kafka (one in a hundred refused, for the DLQ) and Recommend / Collect
    calls to both servers, with clicks and purchases on the A/B server's answers."""

    def __init__(self, settings: Settings, ab: Settings) -> None:
        self.settings, self.ab = settings, ab
        self.tag = uuid.uuid4().hex[:8]
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.outcomes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._guard(self._send), daemon=True),
            threading.Thread(target=self._guard(self._ask), daemon=True),
        ]

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.errors.append(exc)

        return run

    def user(self, n: int) -> str:
        return f"prom-{self.tag}-{n % 40}"

    def events(self) -> Iterator[dict[str, Any]]:
        kinds = ("product_view", "product_view", "add_to_cart", "page_view", "dwell", "purchase")
        n = 0
        while not self.stop.is_set():
            with self._lock:
                outcomes, self.outcomes = self.outcomes, []
            yield from outcomes
            kind = kinds[(n // 40) % len(kinds)]
            event: dict[str, Any] = {
                "event_id": f"prom-{self.tag}-{n}",
                "user_id": self.user(n),
                "event_type": kind,
                # More items than the CF quality monitor samples as candidates (100):
                # below that it evaluates nothing and pz_model_drift never appears.
                "item_id": f"prom-item-{self.tag}-{n % 160}",
                "category": f"prom-cat-{n % 4}",
                "price": 5.0 + n % 9,
                "quantity": 1,
                "event_time": int(time.time() * 1000),
            }
            if kind == "page_view":
                event.pop("item_id")
            if n % 100 == 13:
                event.pop("user_id")  # refused: a dead letter
            n += 1
            yield event

    def _send(self) -> None:
        TrafficSender(self.settings, rate=150, flush_timeout_s=10).send(self.events())

    def _ask(self) -> None:
        # This test is about series, not latency (bench serving measures that): on a
        # loaded 2-core CI machine a Recommend can pass the 1 s production deadline
        # while the job, the writer, two servers and Prometheus share the cores. A
        # stuck server still fails the test, after TRAFFIC_DEADLINE_S.
        with (
            RecommenderClient.from_settings(self.settings, deadline_s=TRAFFIC_DEADLINE_S) as client,
            RecommenderClient.from_settings(self.ab, deadline_s=TRAFFIC_DEADLINE_S) as ab_client,
        ):
            n = 0
            while not self.stop.is_set():
                client.recommend(self.user(n), k=5)
                response = ab_client.recommend(self.user(n + 7), k=5)
                if response.items and n % 2 == 0:
                    now = int(time.time() * 1000)
                    item = response.items[0]
                    props = {"rec_id": response.recommendation_id}
                    with self._lock:
                        for kind in ("click", "purchase"):
                            self.outcomes.append(
                                {
                                    "event_id": f"prom-{self.tag}-{kind}-{n}",
                                    "user_id": self.user(n + 7),
                                    "event_type": kind,
                                    "item_id": item.item_id,
                                    "price": 12.5,
                                    "quantity": 1,
                                    "event_time": now + 200,
                                    "properties": props,
                                }
                            )
                if n % 20 == 0:
                    client.collect(
                        [
                            {
                                "event_id": f"prom-collect-{self.tag}-{n}",
                                "user_id": self.user(n),
                                "event_type": "page_view",
                                "event_time": int(time.time() * 1000),
                            }
                        ]
                    )
                    with pytest.raises(grpc.RpcError) as refused:  # a Recommend error series
                        client.recommend(self.user(n), k=10_000)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                n += 1
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=20)


def expressions_to_query() -> list[promql.Expression]:
    """Dashboard targets and recording rules as written; for alerts, the series they read
    (an alert's own expression is empty while it does not fire)."""
    out = list(promql.dashboard_expressions(RATE_INTERVAL))
    for rule in promql.rules():
        if "record" in rule:
            out.append(promql.Expression(f"record {rule['record']}", rule["expr"]))
            out.append(promql.Expression(f"recorded {rule['record']}", rule["record"]))
        else:
            for selector in promql.selectors(rule["expr"]):
                out.append(promql.Expression(f"alert {rule['alert']} reads", selector))
    return out


def test_every_expression_returns_data_from_a_real_prometheus(
    prometheus: Prometheus, grpc_server: Settings, ab_server: Settings
) -> None:
    expected_absent = [
        e for e in expressions_to_query() if promql.metric_names(e.expr) & ABSENT_IN_TEST_STACK
    ]
    wanted = [e for e in expressions_to_query() if e not in expected_absent]
    assert len(wanted) > 50 and len(expected_absent) < 15

    missing: list[promql.Expression] = wanted
    with Traffic(grpc_server, ab_server) as traffic:
        deadline = time.monotonic() + DATA_TIMEOUT_S
        while missing and time.monotonic() < deadline and not traffic.errors:
            time.sleep(3)
            missing = [e for e in missing if not prometheus.query(e.expr)]
    assert not traffic.errors, traffic.errors
    assert not missing, "no data for:\n" + "\n".join(f"{e.where}: {e.expr}" for e in missing)

    # Every scrape target answered, and every rule evaluates without an error.
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"pz-job", "pz-writer", "pz-serving"}
    assert all(t["health"] == "up" for t in targets), targets
    groups = prometheus.get("/api/v1/rules")["groups"]
    evaluated = [rule for group in groups for rule in group["rules"]]
    assert len(evaluated) == len(promql.rules())
    unhealthy = [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    # The A/B rates are real: the join counted exposures of both servers' experiment.
    variants = prometheus.query("sum by (variant) (pz_experiment_exposures_total)")
    assert {v["metric"]["variant"] for v in variants} <= {"control", "hybrid"}
    assert sum(float(v["value"][1]) for v in variants) > 0
