"""A local Redis Cluster (3 masters, no replicas) of Debian's ``redis-server`` processes.

The test bed of the online store's scale-out path: the nodes are the ``host:port``
entries of ``settings.redis.cluster_nodes`` (all on this machine), or, when none are
set, :data:`DEFAULT_NODES`. Each node runs in the foreground in cluster mode
(``--cluster-enabled yes``) with its own data dir ``<run_dir>/redis-cluster/<port>``
(AOF on, ``nodes.conf``), pidfile ``<run_dir>/pids/redis-cluster/<port>.pid`` and log
``<run_dir>/logs/redis-cluster/<port>.log``; the cluster bus uses ``port + 10000``.

``start`` starts the nodes not running, joins fresh nodes into a cluster once
(``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``) and waits for
``cluster_state:ok`` on every node; a stopped cluster restarts from its ``nodes.conf``
(same node ids, same slots, data from the AOF). ``cluster-require-full-coverage no``:
with a master down, the other masters keep serving their slots.

    personalize infra start|stop|status redis-cluster
    PZ_REDIS__CLUSTER_NODES=127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002   # clients use it
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from ops.infra.processes import ManagedProcess, refuse_busy_ports, wait_until
from ops.infra.redis_server import redis_binary
from ops.infra.service import ServiceStatus
from personalization.settings import Settings

__all__ = ["DEFAULT_NODES", "REDIS_CLUSTER", "RedisClusterService"]

# The local cluster when settings.redis.cluster_nodes is empty.
DEFAULT_NODES = ("127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Redis's cluster bus listens on the client port + 10000.
BUS_PORT_OFFSET = 10000
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# How long a master may be unreachable before the others mark it failed.
NODE_TIMEOUT_MS = 2000


def nodes(settings: Settings) -> list[tuple[str, int]]:
    """(host, port) of every node, in the order of the settings."""
    if settings.redis.cluster_nodes:
        return settings.redis.startup_nodes
    return [(h, int(p)) for h, _, p in (n.rpartition(":") for n in DEFAULT_NODES)]


def data_dir(settings: Settings) -> Path:
    return settings.run_path / "redis-cluster"


def node_dir(settings: Settings, port: int) -> Path:
    return data_dir(settings) / str(port)


def log_dir(settings: Settings) -> Path:
    return settings.run_path / "logs" / "redis-cluster"


def process(settings: Settings, host: str, port: int) -> ManagedProcess:
    # redis-server rewrites its title to "<binary> <bind>:<port> [cluster]"; before that
    # /proc/<pid>/cmdline shows our leading "--port N --cluster-enabled" arguments.
    return ManagedProcess(
        f"redis-cluster/{port}",
        settings.run_path,
        markers=(f"{host}:{port} [cluster]", f"--port {port} --cluster-enabled yes"),
    )


def command(settings: Settings, host: str, port: int) -> list[str]:
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--cluster-require-full-coverage",
        "no",
        "--bind",
        host,
        "--dir",
        str(node_dir(settings, port)),
        "--daemonize",
        "no",
        "--supervised",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dbfilename",
        "dump.rdb",
        "--logfile",
        "",
        "--save",
        "3600 1 300 100",
    ]
    if settings.redis.password:
        cmd += ["--requirepass", settings.redis.password, "--masterauth", settings.redis.password]
    return cmd


def node_client(settings: Settings, host: str, port: int, timeout_s: float = 1.0) -> redis.Redis:
    """A plain client of one node (not the cluster client: it probes that node only)."""
    return redis.Redis(
        host=host,
        port=port,
        password=settings.redis.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def cluster_info(settings: Settings, host: str, port: int) -> dict[str, str] | None:
    """``CLUSTER INFO`` of one node; None when it does not answer."""
    try:
        with node_client(settings, host, port) as client:
            raw = client.execute_command("CLUSTER INFO")
    except (redis.RedisError, OSError):
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if isinstance(raw, dict):  # some redis-py versions parse it already
        return {str(k): str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _node_ok(settings: Settings, host: str, port: int) -> bool:
    info = cluster_info(settings, host, port)
    return info is not None and info.get("cluster_state") == "ok"


def healthy(settings: Settings) -> bool:
    """Every node answers and says ``cluster_state:ok``."""
    return all(_node_ok(settings, h, p) for h, p in nodes(settings))


def _check_local(settings: Settings) -> None:
    high = [p for _, p in nodes(settings) if p + BUS_PORT_OFFSET > 65535]
    if high:
        raise RuntimeError(
            f"redis-cluster ports {high}: the cluster bus (port + 10000) must be < 65536"
        )
    remote = [f"{h}:{p}" for h, p in nodes(settings) if h not in LOCAL_HOSTS]
    if remote:
        raise RuntimeError(
            f"redis-cluster runs local nodes only; {', '.join(remote)} are not on this "
            "machine (start remote clusters where they live)"
        )


def start_node(settings: Settings, host: str, port: int) -> None:
    """Start one node unless ours runs; wait until it answers PING."""
    proc = process(settings, host, port)
    if not proc.is_running():
        proc.clear_stale_pidfile()
        refuse_busy_ports(
            host,
            (port, port + BUS_PORT_OFFSET),
            settings.run_path,
            " (another Redis?). Stop it or choose other ports (PZ_REDIS__CLUSTER_NODES).",
        )
        node_dir(settings, port).mkdir(parents=True, exist_ok=True)
        proc.start(command(settings, host, port), cwd=node_dir(settings, port))

    def exited() -> str | None:
        if proc.started_process_alive():
            return None
        return f"redis-cluster node {host}:{port} exited; log tail:\n{proc.log_tail()}"

    def answers() -> bool:
        with node_client(settings, host, port) as client:
            return bool(client.ping())

    wait_until(answers, START_TIMEOUT_S, what=f"redis-cluster node {host}:{port}", abort=exited)


def _create(settings: Settings) -> None:
    """Join fresh nodes into one cluster, slots spread evenly over the masters."""
    cli = str(Path(redis_binary()).with_name("redis-cli"))
    cmd = [cli, "--cluster", "create", *(f"{h}:{p}" for h, p in nodes(settings))]
    cmd += ["--cluster-replicas", "0", "--cluster-yes"]
    if settings.redis.password:
        cmd += ["-a", settings.redis.password, "--no-auth-warning"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")


def start(settings: Settings) -> None:
    """Start every node, form the cluster if the nodes are fresh, wait for state ok."""
    _check_local(settings)
    members = nodes(settings)
    if len(members) < 3:
        raise RuntimeError(f"a Redis Cluster needs at least 3 masters, got {len(members)}")
    started: list[tuple[str, int]] = []
    try:
        for host, port in members:
            if not process(settings, host, port).is_running():
                started.append((host, port))
            start_node(settings, host, port)
        infos = [cluster_info(settings, h, p) or {} for h, p in members]
        assigned = [int(i.get("cluster_slots_assigned", "0")) for i in infos]
        if not any(assigned):
            _create(settings)
        elif not all(int(i.get("cluster_known_nodes", "0")) >= len(members) for i in infos):
            raise RuntimeError(
                "redis-cluster nodes disagree (some have slots, some do not know the "
                f"others): reset it (personalize infra reset redis-cluster); {data_dir(settings)}"
            )
        wait_until(
            lambda: healthy(settings), START_TIMEOUT_S, interval_s=0.2, what="cluster_state:ok"
        )
    except BaseException:
        for host, port in started:  # do not leave half a cluster behind
            with contextlib.suppress(Exception):
                process(settings, host, port).stop(timeout_s=STOP_TIMEOUT_S)
        raise


def stop(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM every node of ours (each writes its nodes.conf and AOF). True if any ran."""
    stopped = [process(settings, h, p).stop(timeout_s=timeout_s) for h, p in nodes(settings)]
    return any(stopped)


def status(settings: Settings) -> ServiceStatus:
    members = nodes(settings)
    pids = {f"{h}:{p}": process(settings, h, p).pid() for h, p in members}
    running = {n: pid for n, pid in pids.items() if pid is not None}
    first = next(iter(running.values()), None)
    ok = bool(running) and len(running) == len(members) and healthy(settings)
    detail = ""
    if running:
        listed = ", ".join(f"{n} pid {pid}" for n, pid in running.items())
        state = "cluster_state:ok" if ok else "cluster not ok"
        detail = f"{len(running)}/{len(members)} nodes up ({listed}), {state}"
    return ServiceStatus(
        name=REDIS_CLUSTER.name,
        address=address(settings),
        data_dir=data_dir(settings),
        pid=first,
        healthy=ok,
        detail=detail,
    )


def address(settings: Settings) -> str:
    return ",".join(f"{h}:{p}" for h, p in nodes(settings))


def master_of(settings: Settings, key: bytes | str) -> tuple[str, int]:
    """The (host, port) of the master that serves ``key``'s slot (asked of a live node)."""
    for host, port in nodes(settings):
        try:
            with node_client(settings, host, port) as client:
                slot = int(client.execute_command("CLUSTER KEYSLOT", key))
                for start_slot, end_slot, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start_slot <= slot <= end_slot:
                        h = master[0].decode() if isinstance(master[0], bytes) else master[0]
                        return h, int(master[1])
        except (redis.RedisError, OSError):
            continue
    raise RuntimeError("no redis-cluster node answered CLUSTER SLOTS")


@dataclass(frozen=True)
class RedisClusterService:
    """The local cluster as a :class:`~ops.infra.service.Service`: several processes
    (one per node), hence a class of its own rather than a ``ProcessService``."""

    name: str = "redis-cluster"

    def address(self, settings: Settings) -> str:
        return address(settings)

    def data_dir(self, settings: Settings) -> Path:
        return data_dir(settings)

    def log_path(self, settings: Settings) -> Path:
        return log_dir(settings)

    def start(self, settings: Settings) -> None:
        start(settings)

    def stop(self, settings: Settings) -> bool:
        return stop(settings)

    def status(self, settings: Settings) -> ServiceStatus:
        return status(settings)

    def healthy(self, settings: Settings) -> bool:
        return healthy(settings)


REDIS_CLUSTER = RedisClusterService()
