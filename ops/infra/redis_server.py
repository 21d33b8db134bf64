"""A Redis server for the online store, run from Debian's ``redis-server`` binary.

``redis-server`` runs in the foreground (``--daemonize no``) so the pid we record is the
server's; data lives in ``<run_dir>/redis`` with AOF on (``appendfsync everysec``: at
most about a second of acknowledged writes is lost if the machine dies).

Port choice: the default ``settings.redis.port`` is 6379, which is also where Debian's
packaged ``redis-server`` service listens once ``apt-get install`` starts it.
``scripts/bootstrap.sh`` stops and disables that service; if something else still holds
the port, ``REDIS.start`` refuses to adopt it (its data dir and persistence are not
ours) and says so -- stop it or set ``PZ_REDIS__PORT``.

    personalize infra start|stop|status redis
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from ops.infra.processes import ManagedProcess
from ops.infra.service import Launch, ProcessService
from personalization.redis_client import single_node_client
from personalization.settings import Settings

START_TIMEOUT_S = 30.0


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise FileNotFoundError(
            "redis-server not found: run scripts/bootstrap.sh (apt-get install redis-server)"
        )
    return found


def data_dir(settings: Settings) -> Path:
    return settings.run_path / "redis"


def process(settings: Settings) -> ManagedProcess:
    # redis-server soon rewrites its process title to "<binary> <bind>:<port>"; before
    # that /proc/<pid>/cmdline still shows our "--port N" argument.
    r = settings.redis
    return ManagedProcess(
        "redis", settings.run_path, markers=(f"{r.host}:{r.port}", f"--port {r.port} ")
    )


def _client(settings: Settings, timeout_s: float = 1.0) -> redis.Redis:
    # This server's own node, also when clients are pointed at a cluster (cluster_nodes).
    return single_node_client(settings.redis, request_path=False, timeout_s=timeout_s)


def ping(settings: Settings) -> bool:
    """True if a Redis answers PING at the configured address."""
    try:
        with _client(settings) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def command(settings: Settings) -> list[str]:
    r = settings.redis
    cmd = [
        redis_binary(),
        "--bind",
        r.host,
        "--port",
        str(r.port),
        "--dir",
        str(data_dir(settings)),
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
        # Log to stdout, which ManagedProcess sends to <run_dir>/logs/redis.log.
        "--logfile",
        "",
        "--save",
        "3600 1 300 100",
    ]
    if r.password:
        cmd += ["--requirepass", r.password]
    return cmd


def _endpoint(settings: Settings) -> tuple[str, int]:
    return settings.redis.host, settings.redis.port


def _ports(settings: Settings) -> tuple[int, ...]:
    return (settings.redis.port,)


def _prepare(settings: Settings) -> Launch:
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    return Launch(command(settings), cwd=data_dir(settings))


REDIS = ProcessService(
    name="redis",
    process=process,
    endpoint=_endpoint,
    ports=_ports,
    data_dir=data_dir,
    healthy=ping,
    healthy_text="PING ok",
    prepare=_prepare,
    busy_hint=(
        " (the system redis-server service?). Stop it (service redis-server stop) or "
        "choose another port (PZ_REDIS__PORT)."
    ),
    start_timeout_s=START_TIMEOUT_S,
    stop_timeout_s=20.0,
)

# The calls the benchmarks and tests make on the module (for Redis, the process being up
# is all that "ready" needs, so start_process and REDIS.start do the same).
start = REDIS.start_process
stop = REDIS.stop
