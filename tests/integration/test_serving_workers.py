"""``personalize serve --workers 2`` on the session's real Redis.

The CLI's supervisor forks two grpc.aio servers sharing one port (SO_REUSEPORT). Many
separate connections (each channel with its own subchannel pool, so its own TCP
connection) are spread by the kernel over both: each worker's metrics endpoint
(``metrics.serving_port + index``) names its pid, counts the Recommend calls it answered
(both > 0, together exactly the calls sent) and its own catalog refreshes from Redis.
ghz, when installed, resolves Recommend by reflection against the same port. SIGTERM to
the supervisor stops every worker and exits 0; a worker killed from outside makes the
supervisor stop the other one and exit 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.infra.processes import free_port, port_open
from personalization.settings import (
    PROJECT_ROOT,
    SETTINGS_JSON_ENV,
    MetricsSettings,
    ServingSettings,
    Settings,
)
from personalization.v1 import recommender_pb2, recommender_pb2_grpc
from serving.workers import with_workers
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

WORKERS = 2
CHANNELS = 32
CALLS_PER_CHANNEL = 3


def _bindable(port: int) -> bool:
    """Whether a listener could bind ``port`` now. A connect test is not enough: the
    local end of another process's connection (an ephemeral port like ours) accepts no
    connection but still makes the bind fail (a CI run lost a worker's metrics endpoint
    to EADDRINUSE that way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _consecutive_free_ports(n: int) -> int:
    while True:
        base = free_port()
        if all(_bindable(base + i) for i in range(1, n)):
            return base


def _settings(redis_settings: Settings) -> Settings:
    data = redis_settings.model_dump()
    metrics = data["metrics"]
    metrics["serving_port"] = _consecutive_free_ports(WORKERS)
    data["metrics"] = MetricsSettings(**metrics).model_dump()
    data["serving"] = ServingSettings(port=free_port(), workers=1).model_dump()
    return Settings.model_validate(data)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def _worker_pid(samples: dict) -> int | None:
    for (name, labels), value in samples.items():
        if name == "pz_serving_worker" and value == 1:
            return int(dict(labels)["pid"])
    return None


def _recommends(samples: dict) -> float:
    return _value(samples, "pz_serving_rpc_duration_seconds_count", method="Recommend")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.fixture
def workers(redis_server: Settings, tmp_path: Path) -> Iterator[tuple[Settings, subprocess.Popen]]:
    settings = _settings(redis_server)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "-v", "serve", "--workers", str(WORKERS)],
        cwd=PROJECT_ROOT,
        env={**os.environ, SETTINGS_JSON_ENV: settings.model_dump_json()},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield settings, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        print((tmp_path / "serve.log").read_text()[-4000:])


def _wait_workers(settings: Settings, proc: subprocess.Popen) -> dict[int, int]:
    """Worker index -> pid, once both endpoints answer and their catalogs loaded."""
    ports = settings.serving_metrics_ports
    assert len(ports) == WORKERS

    def ready() -> dict[int, int] | None:
        assert proc.poll() is None, f"supervisor exited with {proc.returncode}"
        pids: dict[int, int] = {}
        for index, port in enumerate(ports):
            try:
                samples = _scrape(port)
            except OSError:
                return None
            pid = _worker_pid(samples)
            ok_refreshes = _value(samples, "pz_serving_catalog_refreshes_total", outcome="ok")
            if pid is None or ok_refreshes < 1:
                return None
            pids[index] = pid
        return pids

    pids: dict[int, int] = wait_for(ready, 120, "both serving workers")
    return pids


def test_two_workers_share_the_port_and_stop_on_sigterm(
    workers: tuple[Settings, subprocess.Popen],
) -> None:
    settings, proc = workers
    # The settings say one worker; --workers 2 on the command line wins.
    assert settings.serving.workers == 1
    pids = _wait_workers(with_workers(settings, WORKERS), proc)
    assert len(set(pids.values())) == WORKERS
    for pid in pids.values():
        assert _ppid(pid) == proc.pid, "workers are the supervisor's children"
    ports = with_workers(settings, WORKERS).serving_metrics_ports

    target = f"127.0.0.1:{settings.serving.port}"
    for c in range(CHANNELS):
        # A local subchannel pool: a TCP connection of its own, not one shared by target.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = recommender_pb2_grpc.RecommenderStub(ch)
            for i in range(CALLS_PER_CHANNEL):
                reply = stub.Recommend(
                    recommender_pb2.RecommendRequest(user_id=f"w-{c}-{i}", k=5), timeout=5
                )
                # Read from the real Redis: no row for this user (not store_unavailable).
                assert reply.fallback_reason == "unknown_user", reply
    sent = CHANNELS * CALLS_PER_CHANNEL

    def counted() -> list[float] | None:
        per_worker = [_recommends(_scrape(p)) for p in ports]
        return per_worker if sum(per_worker) == sent else None

    per_worker = wait_for(counted, 10, f"{sent} Recommend calls counted")
    assert all(n > 0 for n in per_worker), f"one worker answered nothing: {per_worker}"

    ghz = shutil.which("ghz") or str(Path.home() / "go" / "bin" / "ghz")
    if Path(ghz).exists():
        # By reflection (serving/reflection.py): the README's command.
        done = subprocess.run(
            [
                ghz, "--insecure", "--call", "personalization.v1.Recommender.Recommend",
                "-d", '{"user_id":"ghz-user","k":5}', "-n", "200", "-c", "8",
                "--connections", "8", target,
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[OK]   200 responses" in done.stdout, done.stdout
        wait_for(
            lambda: sum(_recommends(_scrape(p)) for p in ports) == sent + 200,
            10,
            "ghz's calls counted",
        )

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in pids.values():
        wait_for(lambda pid=pid: _gone(pid), 10, f"worker {pid} gone")
    assert not port_open("127.0.0.1", settings.serving.port)


def test_a_dead_worker_stops_the_others_and_fails(
    workers: tuple[Settings, subprocess.Popen],
) -> None:
    settings, proc = workers
    pids = _wait_workers(with_workers(settings, WORKERS), proc)
    os.kill(pids[1], signal.SIGKILL)
    assert proc.wait(60) == 1
    wait_for(lambda: _gone(pids[0]), 10, "the other worker gone")
