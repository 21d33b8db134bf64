"""deploy/k8s/ stays consistent with the typed settings, the images and each other.

No Kubernetes here: the manifests are never applied (docs/deploy.md says so). These
checks catch the drift that would break them: a file that does not parse, a PZ_*
variable that names no settings field or lands elsewhere, a container port or probe
that differs from what the settings make the process listen on (one metrics port per
serving worker), a Flink parallelism that disagrees with the settings or the slots, a
checkpoint volume mounted somewhere else than PZ_FLINK__CHECKPOINT_DIR, a flink-python
jar or Flink version other than the pinned wheel's, a command no entry point knows.
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

K8S = PROJECT_ROOT / "deploy" / "k8s"
APP_COMMANDS = {"topics", "feast-apply", "writer", "serving"}  # docker/pz-app.sh


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def config_env() -> dict[str, str]:
    return {str(k): str(v) for k, v in by_kind("ConfigMap")["pz-settings"]["data"].items()}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "FlinkDeployment":
        spec: dict[str, Any] = workload["spec"]["podTemplate"]["spec"]
    else:
        spec = workload["spec"]["template"]["spec"]
    return spec


def workloads() -> dict[str, dict[str, Any]]:
    return {**by_kind("Deployment"), **by_kind("Job"), **by_kind("FlinkDeployment")}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps, then its own entries (which win).
    A secret's value is a stand-in; only its name is checked."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "pz-settings"
        env.update(config_env())
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "from-a-secret"))
    return env


def target(name: str) -> tuple[str | None, str]:
    body = name.removeprefix("PZ_").lower()
    if "__" in body:
        section, field = body.split("__", 1)
        return section, field
    return None, body


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("PZ_")]:
        monkeypatch.delenv(key)  # includes PZ_SETTINGS_JSON
    for key, value in env.items():
        if key.startswith("PZ_"):
            monkeypatch.setenv(key, value)
    return Settings()


def main_container(name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workloads()[name])["containers"]
    return containers[0]


def test_manifests_parse_and_kustomize_lists_them_all() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    kinds = {(d["apiVersion"], d["kind"]) for d in documents()}
    assert ("flink.apache.org/v1beta1", "FlinkDeployment") in kinds
    assert set(workloads()) == {
        "pz-user-features",
        "pz-online-store-writer",
        "pz-serving",
        "pz-kafka-topics",
        "pz-feast-apply",
    }


@pytest.mark.parametrize("name", sorted(workloads()))
def test_pz_vars_land_on_real_settings_fields(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in container_env(main_container(name)).items() if k.startswith("PZ_")}
    assert env, f"{name} gets no settings"
    settings = settings_from(env, monkeypatch)  # extra="forbid": unknown fields raise
    for key, value in env.items():
        section, field = target(key)
        holder: BaseModel = settings if section is None else getattr(settings, section)
        assert field in type(holder).model_fields, f"{key}: no field {field!r} in {section}"
        if value == "from-a-secret":
            continue
        got = getattr(holder, field)
        expected = type(got)(value) if not isinstance(got, str) else value
        assert got == expected, f"{key}={value!r} landed as {got!r}"


@pytest.mark.parametrize("name", sorted(set(workloads()) - {"pz-user-features"}))
def test_app_containers_run_a_known_command(name: str) -> None:
    container = main_container(name)
    assert container["image"] == "pz-app:latest"
    assert container["args"][0] in APP_COMMANDS
    assert f"  {container['args'][0]})" in (PROJECT_ROOT / "docker" / "pz-app.sh").read_text()


def test_serving_ports_and_probes_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    container = main_container("pz-serving")
    settings = settings_from(container_env(container), monkeypatch)
    assert settings.serving.workers >= 2
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == settings.serving.port
    # One metrics endpoint per worker process (serving/workers.py).
    metrics = sorted(v for k, v in ports.items() if k.startswith("metrics"))
    assert metrics == settings.serving_metrics_ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.serving.port
    cpu = container["resources"]["requests"]["cpu"]
    assert int(cpu) == settings.serving.workers, "one core per worker"
    pod = pod_spec(workloads()["pz-serving"])
    assert pod["terminationGracePeriodSeconds"] > settings.serving.shutdown_grace_s + 5
    service = by_kind("Service")["pz-serving"]
    assert service["spec"]["ports"][0]["port"] == settings.serving.port
    # The keys file the settings name is where the Secret is mounted.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(settings.serving.api_keys_file).parent == Path(mounts["api-keys"])


def test_writer_metrics_port_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    container = main_container("pz-online-store-writer")
    settings = settings_from(container_env(container), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics.writer_port
    writer = workloads()["pz-online-store-writer"]
    assert writer["spec"]["replicas"] <= settings.kafka.partitions


def test_registry_volume_is_shared_where_the_settings_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(config_env(), monkeypatch)
    for name in ("pz-feast-apply", "pz-online-store-writer", "pz-serving"):
        mounts = {m["name"]: m["mountPath"] for m in main_container(name)["volumeMounts"]}
        assert Path(mounts["pz-run"]) == settings.run_path
    claims = by_kind("PersistentVolumeClaim")
    assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values())


def test_flink_deployment_matches_settings_slots_and_wheel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flink = workloads()["pz-user-features"]
    spec = flink["spec"]
    container = main_container("pz-user-features")
    settings = settings_from(container_env(container), monkeypatch)
    job = spec["job"]
    # Parallelism = the settings' = TaskManagers x 1 slot, a divisor of the partitions.
    assert job["parallelism"] == settings.flink.parallelism
    assert spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] == "1"
    assert settings.kafka.partitions % settings.flink.parallelism == 0
    assert spec["flinkConfiguration"]["python.execution-mode"] == "thread"
    # Checkpoints: the shared claim at the settings' path, in every Flink pod.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(mounts["checkpoints"]) == settings.checkpoint_path
    volumes = {v["name"]: v for v in pod_spec(flink)["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "pz-flink-checkpoints"
    assert spec["flinkConfiguration"]["execution.checkpointing.dir"] == (
        f"file://{settings.checkpoint_path}"
    )
    assert spec["flinkConfiguration"]["high-availability.storageDir"].startswith(
        f"file://{settings.checkpoint_path}/"
    )
    # The Python driver runs the project's job file with the image's venv.
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    args = job["args"]
    script = Path(args[args.index("-py") + 1])
    assert script.parts[:3] == ("/", "opt", "app")
    assert (PROJECT_ROOT / script.relative_to("/opt/app")).is_file()
    assert args[args.index("-pyclientexec") + 1] == "/opt/venv/bin/python"
    # flink-python jar and operator version of the pinned wheel.
    wheel = re.search(
        r'"apache-flink==(\d+)\.(\d+)\.(\d+)"', (PROJECT_ROOT / "pyproject.toml").read_text()
    )
    assert wheel is not None
    major, minor, patch = wheel.groups()
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{major}.{minor}.{patch}.jar"
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    assert settings.kafka_connector_jar_path.parent == Path("/opt/flink/lib")
