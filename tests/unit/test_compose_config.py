"""docker-compose.yml stays consistent with the typed settings and the Docker images.

There is no Docker engine in CI, so the compose file cannot be run there; these checks
catch the drift that would break it: a PZ_* variable that names no settings field (or
lands somewhere else than intended), a connector jar path the image does not create, a
Flink image that does not match the apache-flink pin.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from personalization.settings import PROJECT_ROOT, Settings

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
