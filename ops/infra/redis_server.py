"""A Redis server for the online store, run from Debian's ``redis-server`` binary.

``redis-server`` runs in the foreground (``--daemonize no``) so the pid we record is the
server's; data lives in ``<run_dir>/redis`` with AOF on (``appendfsync everysec``: at
most about a second of acknowledged writes is lost if the machine dies).

Port choice: the default ``settings.redis.port`` is 6379, which is also where Debian's
packaged ``redis-server`` service listens once ``apt-get install`` starts it.
``scripts/bootstrap.sh`` stops and disables that service; if something else still holds
the port, :func:`start` refuses to adopt it (its data dir and persistence are not ours)
and says so -- stop it or set ``PZ_REDIS__PORT``.

    python -m ops.infra.redis_server start|stop|status
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import redis

from ops.infra.processes import ManagedProcess, port_open, wait_until
from personalization.redis_client import redis_client
from personalization.settings import Settings, load_settings

log = logging.getLogger(__name__)

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
    return redis_client(settings.redis, request_path=False, timeout_s=timeout_s)


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


def is_running(settings: Settings) -> bool:
    return process(settings).is_running() and ping(settings)


def start(settings: Settings, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start Redis unless ours is already up and answering PING (then: no-op)."""
    proc = process(settings)
    r = settings.redis
    if proc.is_running():
        wait_until(
            lambda: ping(settings),
            timeout_s,
            what=f"redis on {r.host}:{r.port} to answer PING",
        )
        log.info("redis already running on %s:%d (pid %s)", r.host, r.port, proc.pid())
        return
    proc.clear_stale_pidfile()
    if port_open(r.host, r.port):
        raise RuntimeError(
            f"{r.host}:{r.port} is already in use by a process not started from "
            f"{settings.run_path} (the system redis-server service?). Stop it "
            "(service redis-server stop) or choose another port (PZ_REDIS__PORT)."
        )
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    proc.start(command(settings), cwd=data_dir(settings))

    def exited() -> str | None:
        # Only a dead process counts: while redis rewrites its process title, its
        # /proc cmdline can briefly match no marker (a start-up race seen in CI).
        if proc.started_process_alive():
            return None
        return f"redis-server exited; log tail:\n{proc.log_tail()}"

    try:
        wait_until(
            lambda: ping(settings),
            timeout_s,
            what=f"redis on {r.host}:{r.port} to answer PING",
            abort=exited,
        )
    except BaseException:
        proc.stop()  # do not leave a half-started server behind
        raise
    log.info("redis up on %s:%d (pid %s)", r.host, r.port, proc.pid())


def ensure_running(settings: Settings) -> None:
    start(settings)


def stop(settings: Settings, timeout_s: float = 20.0) -> bool:
    """Stop our Redis (SIGTERM makes it fsync the AOF). True if one was running."""
    return process(settings).stop(timeout_s=timeout_s)


def status(settings: Settings) -> str:
    proc = process(settings)
    pid = proc.pid()
    r = settings.redis
    if pid is None:
        return f"redis: stopped ({r.host}:{r.port})"
    health = "PING ok" if ping(settings) else "not answering"
    return f"redis: running pid {pid} on {r.host}:{r.port}, {health}, data {data_dir(settings)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    action = args[0] if args else "status"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    if action == "start":
        start(settings)
    elif action == "stop":
        stop(settings)
    elif action != "status":
        print("usage: python -m ops.infra.redis_server start|stop|status")
        return 2
    print(status(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
