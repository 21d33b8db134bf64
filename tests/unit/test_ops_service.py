"""The contract every :class:`~ops.infra.service.Service` keeps, checked without starting
anything: a tmp run dir and ports nothing listens on."""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ops import cli, stack
from ops.infra import registry
from ops.infra.kafka_broker import KAFKA
from ops.infra.processes import free_port, write_pid
from ops.infra.redis_server import REDIS
from ops.infra.registry import SERVICES, STACK_SERVICES, select
from ops.infra.service import ProcessService, Service, ServiceStatus, reset
from personalization.settings import FlinkSettings, KafkaSettings, RedisSettings, Settings

ALL = list(SERVICES.values())
PROCESS_SERVICES = [s for s in ALL if isinstance(s, ProcessService)]


def _ids(service: Service) -> str:
    return service.name


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A run dir of its own and free ports: nothing of ours or anyone's is there."""
    ports: set[int] = set()
    while len(ports) < 8:
        port = free_port()
        if port < 55000:  # a cluster node's bus listens on port + 10000
            ports.add(port)
    redis_port, kafka_port, controller_port, rest_port, rpc_port, *cluster = sorted(ports)
    return Settings(
        run_dir=str(tmp_path / "run"),
        redis=RedisSettings(
            port=redis_port, cluster_nodes=tuple(f"127.0.0.1:{p}" for p in cluster)
        ),
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{kafka_port}", controller_port=controller_port
        ),
        flink=FlinkSettings(rest_port=rest_port, rpc_port=rpc_port),
    )


def test_names_are_unique_and_the_cli_offers_each() -> None:
    names = [s.name for s in ALL]
    assert len(set(names)) == len(names) == 4
    assert list(SERVICES) == names
    assert tuple(names) == cli.INFRA_SERVICE_NAMES
    assert set(STACK_SERVICES) <= set(ALL)


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_implements_the_interface(service: Service) -> None:
    assert isinstance(service, Service)


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_lives_under_the_run_dir(service: Service, settings: Settings) -> None:
    run = settings.run_path
    assert service.data_dir(settings).is_relative_to(run)
    assert service.log_path(settings).is_relative_to(run)
    assert service.data_dir(settings) != run
    # Asking where things are creates nothing.
    assert not run.exists()


def test_data_dirs_are_distinct(settings: Settings) -> None:
    dirs = [s.data_dir(settings) for s in ALL]
    assert len(set(dirs)) == len(dirs)
    for a in dirs:
        assert not any(a != b and a.is_relative_to(b) for b in dirs)


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_down_service_says_so(service: Service, settings: Settings) -> None:
    before = settings.model_dump()
    status = service.status(settings)
    assert isinstance(status, ServiceStatus)
    assert (status.running, status.healthy, status.pid) == (False, False, None)
    assert status.name == service.name
    assert status.address == service.address(settings)
    assert status.data_dir == service.data_dir(settings)
    assert str(status) == f"{service.name}: stopped ({service.address(settings)})"
    assert not service.healthy(settings)
    assert service.stop(settings) is False  # nothing of ours to stop
    assert settings.model_dump() == before


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_pickles_by_reference(service: Service, settings: Settings) -> None:
    copy = pickle.loads(pickle.dumps(service))
    assert copy == service
    assert copy.data_dir(settings) == service.data_dir(settings)
    assert copy.address(settings) == service.address(settings)


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_addresses_follow_the_settings(service: Service, settings: Settings) -> None:
    port = {
        "redis": settings.redis.port,
        "redis-cluster": settings.redis.startup_nodes[-1][1],
        "kafka": int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1]),
        "flink": settings.flink.rest_port,
    }[service.name]
    assert service.address(settings).endswith(f":{port}")


@pytest.mark.parametrize("service", PROCESS_SERVICES, ids=_ids)
def test_a_pidfile_naming_someone_else_is_not_trusted(
    service: ProcessService, settings: Settings
) -> None:
    proc = service.process(settings)
    write_pid(proc.pidfile, 1)  # alive, but certainly not ours
    assert not service.status(settings).running
    assert service.stop(settings) is False  # pid 1 is not signalled
    assert service.log_path(settings) == proc.logfile


@pytest.mark.parametrize("service", PROCESS_SERVICES, ids=_ids)
def test_a_foreign_process_on_the_port_is_refused(
    service: ProcessService, settings: Settings
) -> None:
    import socket

    host, port = service.endpoint(settings)
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=f"{host}:{port} is already in use"):
            service.start_process(settings, timeout_s=1.0)
    assert not service.process(settings).pidfile.exists()


@pytest.mark.parametrize("service", ALL, ids=_ids)
def test_reset_deletes_the_data_dir(service: Service, settings: Settings) -> None:
    data = service.data_dir(settings)
    data.mkdir(parents=True)
    (data / "leftover").write_text("x")
    reset(service, settings)
    assert not data.exists()
    assert settings.run_path.exists()  # only the service's own dir goes


def test_running_status_line() -> None:
    status = ServiceStatus("redis", "127.0.0.1:1", Path("/r/redis"), 42, True, "PING ok")
    assert status.running
    assert str(status) == "redis: running pid 42 on 127.0.0.1:1, PING ok, data /r/redis"


def test_select() -> None:
    assert select(None) == STACK_SERVICES == (REDIS, KAFKA)
    assert select("all") == tuple(ALL)
    assert select("kafka") == (KAFKA,)
    with pytest.raises(KeyError):
        select("zookeeper")


# --- personalize infra, on recording fakes ----------------------------------------------


@dataclass
class FakeService:
    name: str
    calls: list[str] = field(default_factory=list)
    running: bool = True

    def address(self, settings: Settings) -> str:
        return f"{self.name}-host:1"

    def data_dir(self, settings: Settings) -> Path:
        return settings.run_path / self.name

    def log_path(self, settings: Settings) -> Path:
        return settings.run_path / f"{self.name}.log"

    def start(self, settings: Settings) -> None:
        self.calls.append(f"start {self.name}")
        self.running = True

    def stop(self, settings: Settings) -> bool:
        self.calls.append(f"stop {self.name}")
        was, self.running = self.running, False
        return was

    def status(self, settings: Settings) -> ServiceStatus:
        pid = 7 if self.running else None
        return ServiceStatus(self.name, self.address(settings), self.data_dir(settings), pid)

    def healthy(self, settings: Settings) -> bool:
        return self.running


def _fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeService, FakeService, FakeService]:
    calls: list[str] = []
    a, b, c = (FakeService(n, calls) for n in ("redis", "kafka", "flink"))
    monkeypatch.setattr(registry, "SERVICES", {s.name: s for s in (a, b, c)})
    monkeypatch.setattr(registry, "STACK_SERVICES", (a, b))
    return a, b, c


def _run(settings: Settings, *argv: str) -> int:
    args = cli.build_parser().parse_args(["infra", *argv])
    assert isinstance(args, argparse.Namespace)
    return int(args.func(settings, args))


def test_fakes_implement_the_interface() -> None:
    assert isinstance(FakeService("x"), Service)


def test_infra_start_defaults_to_the_stack_services(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, _ = _fakes(monkeypatch)
    assert _run(settings, "start") == 0
    assert a.calls == ["start redis", "start kafka"]
    out = capsys.readouterr().out
    assert "[personalize] redis: redis-host:1" in out
    assert "kafka: running pid 7 on kafka-host:1" in out
    assert "flink" not in out


def test_infra_stop_all_in_reverse_order(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, c = _fakes(monkeypatch)
    c.running = False
    assert _run(settings, "down", "all") == 0  # the earlier spelling of stop
    assert a.calls == ["stop flink", "stop kafka", "stop redis"]
    out = capsys.readouterr().out
    assert "flink: not running" in out and "redis: stopped" in out
    assert "redis: stopped (redis-host:1)" in out.splitlines()


def test_infra_status_touches_nothing(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, _ = _fakes(monkeypatch)
    assert _run(settings, "status", "flink") == 0
    assert a.calls == []
    assert capsys.readouterr().out.splitlines() == [
        f"flink: running pid 7 on flink-host:1, data {settings.run_path / 'flink'}"
    ]


def test_infra_reset_needs_a_service_name(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    a, _, _ = _fakes(monkeypatch)
    assert _run(settings, "reset") == 2
    assert a.calls == []
    assert _run(settings, "reset", "kafka") == 0
    assert a.calls == ["stop kafka"]


def test_start_infra_starts_in_order_and_says_where(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    a, b, _ = _fakes(monkeypatch)
    fetched: list[Settings] = []
    monkeypatch.setattr(stack.jars, "ensure_jars", fetched.append)
    said: list[str] = []
    stack.start_infra(settings, said.append, [b, a])
    assert a.calls == ["start kafka", "start redis"]
    assert said == ["kafka: kafka-host:1", "redis: redis-host:1"]
    assert fetched == []  # jars are the real broker's need, not a fake's


# --- the local Redis Cluster (several processes: not a ProcessService) ------------------


def test_redis_cluster_refuses_a_foreign_process_on_a_node_port(settings: Settings) -> None:
    import socket

    from ops.infra import redis_cluster

    host, port = settings.redis.startup_nodes[0]
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=f"{host}:{port} is already in use"):
            redis_cluster.start(settings)
    assert not redis_cluster.process(settings, host, port).pidfile.exists()
    assert not redis_cluster.status(settings).running


@pytest.mark.parametrize(
    ("nodes", "error"),
    [
        (("10.1.2.3:7000", "127.0.0.1:7001", "127.0.0.1:7002"), "local nodes only"),
        (("127.0.0.1:60000", "127.0.0.1:7001", "127.0.0.1:7002"), "cluster bus"),
        (("127.0.0.1:7000", "127.0.0.1:7001"), "at least 3 masters"),
    ],
)
def test_redis_cluster_refuses_what_it_cannot_run(
    settings: Settings, nodes: tuple[str, ...], error: str
) -> None:
    from ops.infra import redis_cluster

    bad = settings.model_copy(update={"redis": RedisSettings(cluster_nodes=nodes)})
    with pytest.raises(RuntimeError, match=error):
        redis_cluster.start(bad)
    assert not bad.run_path.exists()  # refused before anything was created


def test_redis_cluster_nodes_default_to_three_local_ports(tmp_path: Path) -> None:
    from ops.infra import redis_cluster

    plain = Settings(run_dir=str(tmp_path))
    assert redis_cluster.address(plain) == ",".join(redis_cluster.DEFAULT_NODES)
    assert redis_cluster.nodes(plain) == [
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7001),
        ("127.0.0.1", 7002),
    ]
    log = redis_cluster.process(plain, "127.0.0.1", 7001).logfile
    assert log.is_relative_to(redis_cluster.log_dir(plain))
