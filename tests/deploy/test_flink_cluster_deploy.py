"""The user-feature job deployed to a real standalone Flink cluster.

``flink_cluster.start`` brings up a JobManager and a TaskManager from the apache-flink
wheel's scripts; the job goes in through ``flink run --python`` with the settings as
``--settings-json`` (what ``personalize deploy`` does), and events produced to Kafka must
come out as features in Redis through the online-store writer.

Isolation from the ``pipeline`` fixture (the same job on a MiniCluster, possibly in the
same session): a derived Settings with its own run dir (pid files, Flink conf/logs,
checkpoints, Feast registry), consumer groups, job name and topic names, so neither job
sees the other's events and the features checked here can only come from this cluster.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops import stack
from ops.infra import flink_cluster
from ops.infra import kafka_broker as kafka_mod
from personalization.settings import PROJECT_ROOT, Settings
from serving.online_features import StoreUnavailable, UserFeatureReader
from tests.identity import stored_id
from traffic.sender import TrafficSender

pytestmark = [pytest.mark.deploy, pytest.mark.integration]

# Spaces, quotes, a $ and a backtick: a job name that only survives `flink run` if the
# --settings-json argument reaches the Python driver verbatim (no shell re-splitting).
JOB_NAME_TEMPLATE = "pz deploy {tag} 'sq' \"dq\" $HOME `x` ü"


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    job_id: str
    started_s: float


def derived_settings(base: Settings, tag: str) -> Settings:
    """``base`` with its own run dir, groups, job name, checkpoints and topics.

    Built from a dump rather than ``model_copy(update=...)``: the sections are frozen
    models, and ``model_copy`` would also carry over the cached ``run_path`` of ``base``.
    """
    run_dir = Path(base.run_dir) / f"deploy-{tag}"
    run_dir.mkdir(parents=True)
    (run_dir / "jars").symlink_to(base.jars_path.resolve(), target_is_directory=True)
    data = base.model_dump()
    data["run_dir"] = str(run_dir)
    kafka = data["kafka"]
    # Every topic field, so a topic added to the settings is isolated too.
    for field in [name for name in kafka if name.endswith("_topic")]:
        kafka[field] = f"{kafka[field]}-deploy-{tag}"
    kafka["flink_consumer_group"] = f"pz-deploy-features-{tag}"
    kafka["writer_consumer_group"] = f"pz-deploy-writer-{tag}"
    data["flink"]["job_name"] = JOB_NAME_TEMPLATE.format(tag=tag)
    data["flink"]["checkpoint_dir"] = str(run_dir / "deploy-checkpoints")
    settings = Settings.model_validate(data)
    assert settings.run_path == run_dir.resolve()
    assert settings.checkpoint_path == (run_dir / "deploy-checkpoints").resolve()
    return settings


def cluster_jvms(settings: Settings) -> list[int]:
    """Pids of every process whose command line names this cluster's conf dir."""
    marker = str(flink_cluster.conf_dir(settings)).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def taskmanager_pid(settings: Settings) -> int:
    pids = [
        int(p.read_text().split()[0])
        for p in flink_cluster.pid_dir(settings).glob("flink-*-taskexecutor.pid")
    ]
    assert len(pids) == 1, pids
    return pids[0]


def rest(settings: Settings, path: str) -> dict[str, Any]:
    return flink_cluster._rest(settings, path)


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last={last!r}")


def _log_tails(settings: Settings) -> str:
    parts = [f"--- writer ---\n{stack.WRITER.process(settings).log_tail(20)}"]
    for log in sorted(flink_cluster.log_dir(settings).glob("*.log")):
        parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def deployment(
    redis_server: Settings, kafka_broker: Settings, jars: object
) -> Iterator[Deployment]:
    settings = derived_settings(kafka_broker, uuid.uuid4().hex[:8])
    started = time.monotonic()
    job_id = ""
    last = started

    def phase(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        print(f"\n[deploy] {name}: {now - last:.1f}s")
        last = now

    try:
        _ensure_topics(settings)
        flink_cluster.start(settings)
        phase("cluster up")
        stack.feast_apply(settings)
        stack.start_component(settings, stack.WRITER)
        phase("feast apply + writer")
        job_id = flink_cluster.submit_python_job(
            settings,
            "flink_jobs.user_features_job",
            ["--settings-json", settings.model_dump_json(), "--restore", "none"],
        )
        phase("flink run --python")
        flink_cluster.wait_for_job_state(settings, job_id, ["RUNNING"], timeout_s=60)
        phase("job RUNNING")
        yield Deployment(settings, job_id, started)
    finally:
        try:
            if job_id:
                flink_cluster.cancel_job(settings, job_id)
        finally:
            stack.WRITER.process(settings).stop()
            flink_cluster.stop(settings)
            leftovers = cluster_jvms(settings)
            phase("teardown")
            for pid in leftovers:  # last resort; stop() already SIGKILLs stragglers
                os.kill(pid, 9)
        assert not leftovers, f"flink JVMs left behind: {leftovers}"


def _ensure_topics(settings: Settings) -> None:
    created = kafka_mod.ensure_topics(settings)
    assert set(created) == set(settings.kafka.all_topics)


def test_taskmanager_inherits_embedded_python_path(deployment: Deployment) -> None:
    """Thread mode embeds Python in the TaskManager JVM through PEMJA, which ignores the
    venv (FLINK-38585): the venv's site-packages and the project must reach it through
    PYTHONPATH inherited from start-cluster.sh."""
    settings = deployment.settings
    raw = Path(f"/proc/{taskmanager_pid(settings)}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    entries = env.get("PYTHONPATH", "").split(os.pathsep)
    venv_site = str(Path(sys.executable).parent.parent / "lib")
    assert any(e.startswith(venv_site) and e.endswith("site-packages") for e in entries), entries
    assert str(PROJECT_ROOT) in entries
    conf = (flink_cluster.conf_dir(settings) / "config.yaml").read_text()
    assert "python.execution-mode: thread" in conf


def test_events_become_features_through_the_cluster(deployment: Deployment) -> None:
    settings = deployment.settings
    user = f"deploy-{uuid.uuid4().hex[:10]}"
    now = int(time.time() * 1000)
    events = [
        {
            "event_id": f"{user}-v{i}",
            "user_id": user,
            "event_type": "product_view",
            "item_id": f"sku-deploy-{i}",
            "category": "lamps",
            "event_time": now - (4 - i) * 1000,
        }
        for i in range(4)
    ]
    stats = TrafficSender(settings, rate=0).send(events)
    assert stats.delivered == 4 and stats.errors == 0

    reader = UserFeatureReader(settings)
    sent = time.monotonic()

    def complete() -> Any:
        try:
            row = reader.read(stored_id(settings, user))
        except StoreUnavailable:
            # The request-path read gives Redis 50 ms; on a loaded machine (CI) one read
            # can miss that while the cluster starts: poll again rather than fail.
            return None
        return row if row is not None and row.events_total >= 4 else None

    try:
        row = wait_for(complete, 60, f"features of {user} in Redis")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_log_tails(settings)}") from None
    print(f"\nfeatures readable {time.monotonic() - sent:.2f}s after sending")
    assert row.events_total == 4
    assert row.counts["product_view_5m"] == 4
    assert row.counts["product_view_1h"] == 4
    assert row.last_seen_ms == events[-1]["event_time"]
    assert row.recent_items == [f"sku-deploy-{i}" for i in (3, 2, 1, 0)]
    reader.close()


def test_rest_reports_running_job_with_records(deployment: Deployment) -> None:
    settings = deployment.settings
    # The job name came only through --settings-json: quotes, $ and ` arrived verbatim.
    job = rest(settings, f"/jobs/{deployment.job_id}")
    assert job["name"] == settings.flink.job_name
    assert job["state"] == "RUNNING"
    jobs = {j["jid"]: j for j in flink_cluster.list_jobs(settings)}
    assert jobs[deployment.job_id]["state"] == "RUNNING"
    overview = flink_cluster.overview(settings)
    assert overview is not None and overview["taskmanagers"] == 1

    def records() -> dict[str, int] | None:
        vertices = rest(settings, f"/jobs/{deployment.job_id}")["vertices"]
        by_name = {v["name"]: v["metrics"] for v in vertices}
        read = sum(m.get("read-records", 0) for m in by_name.values())
        source_out = sum(
            m.get("write-records", 0) for name, m in by_name.items() if "Source" in name
        )
        if all(v["status"] == "RUNNING" for v in vertices) and read > 0 and source_out > 0:
            return {"read": read, "source_out": source_out}
        return None

    # Vertex metrics are refreshed by the JobManager's metric fetcher (10 s interval).
    counts = wait_for(records, 45, "records in the job's vertex metrics", every_s=1.0)
    assert counts["read"] > 0

    # The Python operators ran embedded in the TaskManager JVM (thread mode), with the
    # venv's interpreter.
    config = rest(settings, f"/jobs/{deployment.job_id}/jobmanager/config")
    values = {item["key"]: item["value"] for item in config}
    assert values.get("python.execution-mode") == "thread"
    tm_log = "".join(
        p.read_text(errors="replace")
        for p in flink_cluster.log_dir(settings).glob("*taskexecutor*.log")
    )
    assert f"use python exec from config {sys.executable}" in tm_log
    assert "EmbeddedPythonEnvironmentManager" in tm_log


def test_an_exited_taskmanager_is_started_again_and_gets_the_job(deployment: Deployment) -> None:
    """What a supervisor does for the standalone cluster (a TaskManager can exit by
    itself: see ``flink_cluster.restart_exited_taskmanagers``). Last in the module: the
    job restarts."""
    settings = deployment.settings
    assert flink_cluster.restart_exited_taskmanagers(settings, 1) == []  # all alive
    killed = flink_cluster.kill_taskmanager(settings, 0)
    assert flink_cluster.restart_exited_taskmanagers(settings, 1) == [0]
    new = flink_cluster.taskmanager_pid(settings, 0)
    assert new is not None and new != killed
    assert flink_cluster.restart_exited_taskmanagers(settings, 1) == []

    def running_again() -> bool:
        job = rest(settings, f"/jobs/{deployment.job_id}")
        assert job["state"] not in flink_cluster.TERMINAL_STATES, job["state"]
        return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])

    wait_for(running_again, 120, "the job to run again on the new TaskManager", every_s=1.0)
