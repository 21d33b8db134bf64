"""docker-compose.yml stays consistent with the typed settings and the Docker images.

There is no Docker engine in CI, so the compose file cannot be run there; these checks
catch the drift that would break it: a file Debian's docker-compose (1.29, which parses
without an engine) refuses, a PZ_* variable that names no settings field (or lands
somewhere else than intended), a command no entry point knows, a port or metrics
endpoint that differs from what the settings make the process listen on, a Prometheus
target that misses one, a connector jar path the image does not create, a Flink image
that does not match the apache-flink pin. The checks below the first ones read the
configuration as docker-compose resolves it (``docker-compose config``: anchors merged,
paths absolute), which is what an engine would run.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from personalization.settings import PROJECT_ROOT, Settings
from tests.system_tools import require_tool

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
FLINK_DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile.flink"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def pz_vars_by_service() -> dict[str, dict[str, str]]:
    return {
        name: {k: v for k, v in service_env(svc).items() if k.startswith("PZ_")}
        for name, svc in compose()["services"].items()
    }


def target(name: str) -> tuple[str | None, str]:
    """``PZ_KAFKA__BOOTSTRAP_SERVERS`` -> ("kafka", "bootstrap_servers"); top level -> None."""
    body = name.removeprefix("PZ_").lower()
    if "__" in body:
        section, field = body.split("__", 1)
        return section, field
    return None, body


# Variables the images or entry scripts read themselves, not Settings.
NOT_SETTINGS = {"PZ_RESTORE"}


def test_compose_parses_and_has_the_services() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "redis",
        "jobmanager",
        "taskmanager",
        "job-submit",
        "feast-apply",
        "online-store-writer",
        "serving",
    } <= set(services)
    assert "--appendonly" in services["redis"]["command"]


def test_every_app_service_gets_the_shared_pz_env() -> None:
    by_service = pz_vars_by_service()
    shared = by_service["serving"]
    assert shared["PZ_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert shared["PZ_REDIS__HOST"] == "redis"
    assert shared["PZ_SERVING__HOST"] == "0.0.0.0"
    for name in ("jobmanager", "taskmanager", "job-submit", "feast-apply", "online-store-writer"):
        missing = set(shared) - set(by_service[name])
        assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("service", sorted(pz_vars_by_service()))
def test_pz_vars_land_on_real_settings_fields(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in pz_vars_by_service()[service].items() if k not in NOT_SETTINGS}
    for key in [k for k in os.environ if k.startswith("PZ_")]:
        monkeypatch.delenv(key)  # includes PZ_SETTINGS_JSON
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = Settings()  # extra="forbid" on every section: unknown fields raise
    for key, value in env.items():
        section, field = target(key)
        holder: BaseModel = settings if section is None else getattr(settings, section)
        assert field in type(holder).model_fields, f"{key}: no field {field!r} in {section}"
        got = getattr(holder, field)
        expected = type(got)(value) if not isinstance(got, str) else value
        assert got == expected, f"{key}={value!r} landed as {got!r}"


def test_flink_image_matches_the_settings_and_the_wheel() -> None:
    dockerfile = FLINK_DOCKERFILE.read_text()
    env = pz_vars_by_service()["job-submit"]
    jar = Path(env["PZ_FLINK__KAFKA_CONNECTOR_JAR"])
    assert jar.parent == Path("/opt/flink/lib")
    connector = re.search(r"ARG KAFKA_CONNECTOR_VERSION=(\S+)", dockerfile)
    assert connector is not None
    assert jar.name == f"flink-sql-connector-kafka-{connector.group(1)}.jar"
    pom = (PROJECT_ROOT / "infra" / "pom.xml").read_text()
    assert f"<flink.kafka.connector.version>{connector.group(1)}<" in pom
    image = re.search(r"ARG FLINK_IMAGE=flink:(\d+\.\d+\.\d+)", dockerfile)
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    wheel = re.search(r'"apache-flink==([\d.]+)"', pyproject)
    assert image is not None and wheel is not None
    assert image.group(1) == wheel.group(1)


def test_parallelism_fits_the_partitions_and_the_taskmanagers() -> None:
    """Every source subtask gets the same number of partitions (a multiple, at least one
    each), the broker's default agrees with the settings, and the parallelism is the
    number of TaskManager processes x 1 slot (thread mode: the slots of one TaskManager
    share one Python interpreter)."""
    services = compose()["services"]
    env = pz_vars_by_service()["job-submit"]
    parallelism, partitions = int(env["PZ_FLINK__PARALLELISM"]), int(env["PZ_KAFKA__PARTITIONS"])
    assert parallelism >= 1
    assert partitions >= parallelism and partitions % parallelism == 0, (partitions, parallelism)
    assert int(service_env(services["kafka"])["KAFKA_NUM_PARTITIONS"]) == partitions
    taskmanager = services["taskmanager"]
    props = yaml.safe_load(service_env(taskmanager)["FLINK_PROPERTIES"])
    assert props["taskmanager.numberOfTaskSlots"] == 1
    assert taskmanager["deploy"]["replicas"] == parallelism
    jobmanager = yaml.safe_load(service_env(services["jobmanager"])["FLINK_PROPERTIES"])
    assert jobmanager["parallelism.default"] == parallelism


# --- as docker-compose resolves it ---------------------------------------------------

APP_DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile.app"
APP_ENTRY = PROJECT_ROOT / "docker" / "pz-app.sh"
PROMETHEUS_COMPOSE = PROJECT_ROOT / "ops" / "prometheus" / "prometheus.compose.yml"
# Commands of the official Flink image's entry point (docker-entrypoint.sh).
FLINK_IMAGE_COMMANDS = {"jobmanager", "taskmanager"}


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("docker-compose", "docker-compose")
    return subprocess.run(
        [tool, "--project-directory", str(PROJECT_ROOT), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PZ_", "COMPOSE_"))},
    )


@functools.cache
def _resolved_text() -> str:
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    return result.stdout


def resolved() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_resolved_text())
    return loaded


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process of this service builds from its environment."""
    for key in [k for k in os.environ if k.startswith("PZ_")]:
        monkeypatch.delenv(key)
    for key, value in service_env(service).items():
        if key.startswith("PZ_") and key not in NOT_SETTINGS:
            monkeypatch.setenv(key, value)
    return Settings()


def exposed(service: dict[str, Any]) -> set[int]:
    return {int(str(port)) for port in service.get("expose", [])}


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out[int(port["target"])] = int(port["published"])
        else:
            host, container = str(port).rsplit(":", 1)
            out[int(container)] = int(host.rsplit(":", 1)[-1])
    return out


def test_docker_compose_parses_it() -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert set(resolved()["services"]) == set(compose()["services"])


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The parse is a real check: a service with an unknown key fails it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("  redis:\n", "  redis:\n    bogus_key: 1\n", 1))
    tool = require_tool("docker-compose", "docker-compose")
    result = subprocess.run(
        [tool, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "bogus_key" in result.stderr


def test_every_command_is_known_to_its_image() -> None:
    entry = APP_ENTRY.read_text()
    app_commands = set(re.findall(r"^\s+([a-z][\w-]*)\)", entry, flags=re.M))
    assert {"topics", "feast-apply", "writer", "serving"} <= app_commands
    # The modules the entry point runs exist and run as scripts.
    for module in re.findall(r"exec python -m ([\w.]+)", entry):
        path = PROJECT_ROOT / (module.replace(".", "/") + ".py")
        assert 'if __name__ == "__main__":' in path.read_text(), module
    assert "def cmd_feast_apply" in (PROJECT_ROOT / "ops" / "cli.py").read_text()
    installed = set(re.findall(r"/usr/local/bin/([\w-]+)", FLINK_DOCKERFILE.read_text()))
    for name, service in resolved()["services"].items():
        command = service.get("command")
        image = service.get("image", "")
        if image == "pz-app:latest":
            assert command and command[0] in app_commands, (name, command)
            assert service["build"]["dockerfile"] == "docker/Dockerfile.app"
        elif image == "pz-flink:latest":
            assert command and command[0] in FLINK_IMAGE_COMMANDS | installed, (name, command)
            assert service["build"]["dockerfile"] == "docker/Dockerfile.flink"
    assert "pz-app" in APP_DOCKERFILE.read_text()


def test_ports_agree_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = resolved()["services"]
    serving = settings_of(services["serving"], monkeypatch)
    assert serving.serving.host == "0.0.0.0"
    assert serving.serving.port in published(services["serving"])
    assert serving.metrics.serving_port in exposed(services["serving"])
    writer = settings_of(services["online-store-writer"], monkeypatch)
    assert writer.metrics.writer_port in exposed(services["online-store-writer"])
    job = settings_of(services["taskmanager"], monkeypatch)
    assert job.metrics.job_port in exposed(services["taskmanager"])
    # Redis and Kafka where the settings look for them.
    redis = settings_of(services["serving"], monkeypatch).redis
    assert redis.host == "redis" and redis.port in published(services["redis"])
    kafka_env = service_env(services["kafka"])
    host, port = serving.kafka.bootstrap_servers.split(":")
    assert f"PLAINTEXT://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://:{port}" in kafka_env["KAFKA_LISTENERS"]


@pytest.mark.parametrize("service", ["taskmanager", "online-store-writer", "serving"])
def test_metrics_endpoints_are_reachable_from_prometheus(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metrics bind every interface (127.0.0.1, the default, is unreachable from another
    container) and Prometheus scrapes each one at the port the settings give it."""
    services = resolved()["services"]
    settings = settings_of(services[service], monkeypatch)
    assert settings.metrics.host == "0.0.0.0"
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load(PROMETHEUS_COMPOSE.read_text())["scrape_configs"]
    }
    if service == "taskmanager":
        (dns,) = jobs["pz-job"]["dns_sd_configs"]
        assert dns["names"] == ["taskmanager"] and dns["port"] == settings.metrics.job_port
    else:
        job, port = {
            "online-store-writer": ("pz-writer", settings.metrics.writer_port),
            "serving": ("pz-serving", settings.metrics.serving_port),
        }[service]
        (static,) = jobs[job]["static_configs"]
        assert static["targets"] == [f"{service}:{port}"]


def test_flink_reporter_is_scraped_where_it_listens() -> None:
    services = resolved()["services"]
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load(PROMETHEUS_COMPOSE.read_text())["scrape_configs"]
    }
    flink = jobs["flink"]
    for name in ("jobmanager", "taskmanager"):
        props = yaml.safe_load(service_env(services[name])["FLINK_PROPERTIES"])
        assert props["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
        port = int(props["metrics.reporter.prom.port"])
        assert port in exposed(services[name]), name
        if name == "jobmanager":
            assert f"jobmanager:{port}" in flink["static_configs"][0]["targets"]
        else:
            (dns,) = flink["dns_sd_configs"]
            assert dns["names"] == ["taskmanager"] and dns["port"] == port


def test_prometheus_and_grafana_mount_files_that_exist() -> None:
    services = resolved()["services"]
    mounted = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = str(volume).split(":")[:2]
            if source.startswith("/"):
                assert Path(source).exists(), (name, source)
                assert Path(source).is_relative_to(PROJECT_ROOT)
                mounted[target] = Path(source)
    config = mounted["/etc/prometheus/prometheus.yml"]
    assert config == PROMETHEUS_COMPOSE
    rule_files = yaml.safe_load(config.read_text())["rule_files"]
    for rule_file in rule_files:  # relative to the config, i.e. under /etc/prometheus
        target = Path("/etc/prometheus") / rule_file
        source = mounted[str(target.parent)] / target.name
        assert source.exists(), rule_file
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert (mounted["/etc/grafana/provisioning"] / "datasources").is_dir()
