"""The pure parts of several serving processes: ports per worker and the port reservation."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from personalization.settings import MetricsSettings, ServingSettings, Settings
from serving.workers import reserve_port, with_workers, worker_settings


def test_each_worker_gets_the_next_metrics_port_and_the_shared_grpc_port() -> None:
    settings = with_workers(Settings(metrics=MetricsSettings(serving_port=19466)), 3)
    assert settings.serving_metrics_ports == [19466, 19467, 19468]
    own = [worker_settings(settings, i, 50123) for i in range(3)]
    assert [s.metrics.serving_port for s in own] == [19466, 19467, 19468]
    assert {s.serving.port for s in own} == {50123}
    assert {s.serving.workers for s in own} == {1}


def test_metrics_off_stays_off_for_every_worker() -> None:
    settings = with_workers(Settings(metrics=MetricsSettings(serving_port=0)), 2)
    assert settings.serving_metrics_ports == []
    assert worker_settings(settings, 1, 50123).metrics.serving_port == 0


def test_worker_metrics_ports_may_not_hit_another_endpoint() -> None:
    metrics = MetricsSettings(job_port=9000, writer_port=9467, serving_port=9466)
    Settings(metrics=metrics)  # one worker: 9466 only
    with pytest.raises(ValidationError, match="9467"):
        Settings(metrics=metrics, serving=ServingSettings(workers=2))
    with pytest.raises(ValidationError):
        ServingSettings(workers=0)


def test_reserved_port_admits_reuseport_binders_only() -> None:
    with reserve_port("127.0.0.1", 0) as port:
        assert port > 0
        # What each worker's grpc server does (grpc.so_reuseport=1): allowed.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
        # Anything else (a second server without the option): refused.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        # Nor may a second supervisor join this one's group.
        with pytest.raises(RuntimeError, match="cannot bind"), reserve_port("127.0.0.1", port):
            pass
