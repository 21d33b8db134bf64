"""Several serving processes on one port: ``python -m serving.server --workers N``.

One Python process answers Recommend at about the rate one core allows (the event loop,
the ranking and protobuf all hold the GIL). ``serve_workers`` forks N complete servers
that share ``serving.port`` through ``SO_REUSEPORT`` (the kernel spreads incoming
*connections* over them), as grpc's ``examples/python/multiprocessing`` does:

- the supervisor (this process) reserves the port with a bound, non-listening
  ``SO_REUSEPORT`` socket (which also resolves port 0), then forks **before** any gRPC
  server, channel or thread exists: gRPC's core is not fork-safe once started;
- each worker builds its own :class:`~serving.app.ServingApp` (catalog refresh, model
  watcher, Redis client, Kafka producer) with ``grpc.so_reuseport`` on, and serves its
  metrics on ``metrics.serving_port + index`` (``Settings.serving_metrics_ports``).
  Each worker keeps prometheus-client's in-process registry: its catalog gauges are its
  own catalog's, computed at scrape time, which the multiprocess (mmap) mode cannot do
  (it only sums or picks files), and the request path keeps its lock-free-ish counters.
  Prometheus scrapes every worker port; the rules and the Grafana panels already
  aggregate with ``sum`` / ``max`` over instances. ``pz_serving_worker{worker,pid}``
  names the process behind an endpoint;
- SIGTERM / SIGINT to the supervisor is forwarded to every worker (each drains its
  calls for ``serving.shutdown_grace_s``); the supervisor waits for all and exits 0.
  A worker that exits on its own makes the supervisor stop the others and exit 1, so
  a process manager (systemd, Kubernetes, ``personalize up``'s status) sees the failure
  instead of a server running at a fraction of its capacity. Workers ask the kernel for
  SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``), so none outlives it.

With one worker nothing is forked: ``serve`` runs in the process, with
``grpc.so_reuseport`` off, so a taken port fails loudly.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from personalization.settings import Settings

__all__ = ["reserve_port", "serve_workers", "with_workers", "worker_settings"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Beyond the workers' own drain (serving.shutdown_grace_s) before they are killed.
_STOP_MARGIN_S = 10.0


def with_workers(settings: Settings, workers: int) -> Settings:
    """``settings`` with ``serving.workers`` set, validated again (metrics ports)."""
    data = settings.model_dump()
    data["serving"]["workers"] = workers
    return Settings.model_validate(data)


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """What worker ``index`` runs with: the shared gRPC port, its own metrics port."""
    data = settings.model_dump()
    data["serving"]["port"] = port
    # The port range was checked on the supervisor's settings; one port per worker now.
    data["serving"]["workers"] = 1
    if settings.metrics.serving_port > 0:
        data["metrics"]["serving_port"] = settings.serving_metrics_ports[index]
    return Settings.model_validate(data)


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` for the workers with a bound, non-listening SO_REUSEPORT socket.

    The port must be free first (a plain bind): joining another server's SO_REUSEPORT
    group by accident would split its traffic with ours. Port 0 picks a free port.
    """
    bind_host = host.strip("[]")
    family, _, _, _, address = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise RuntimeError(f"cannot bind {host}:{port}: {exc}") from exc
        chosen = int(probe.getsockname()[1])
    held = socket.socket(family, socket.SOCK_STREAM)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((bind_host, chosen, *address[2:]))
        yield chosen
    finally:
        held.close()


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _worker_main(
    settings_json: str, index: int, parent: int, ready: Any, kwargs: dict[str, Any]
) -> None:
    _die_with_parent(parent)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    from serving import metrics as serving_metrics
    from serving.app import serve

    settings = Settings.model_validate_json(settings_json)
    serving_metrics.WORKER.labels(str(index), str(os.getpid())).set(1)
    app = serve(settings, block=False, reuse_port=True, **kwargs)
    ready.put((index, os.getpid()))
    log.info("worker %d (pid %d) serving on %s", index, os.getpid(), app.target)
    while not stop.wait(1.0):
        pass
    log.info("worker %d: shutting down (grace %.1fs)", index, settings.serving.shutdown_grace_s)
    app.stop()


def serve_workers(settings: Settings, workers: int | None = None, **kwargs: Any) -> int:
    """Fork ``workers`` (default ``serving.workers``) servers on one port; run until
    SIGTERM/SIGINT; return the exit code (0, or 1 if a worker failed)."""
    settings = with_workers(settings, workers or settings.serving.workers)
    n = settings.serving.workers
    ctx = multiprocessing.get_context("fork")
    ready = ctx.SimpleQueue()
    stop_requested = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop_requested.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    procs: list[Any] = []
    failed = False
    try:
        with reserve_port(settings.serving.host, settings.serving.port) as port:
            for i in range(n):
                own = worker_settings(settings, i, port).model_dump_json()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(own, i, os.getpid(), ready, kwargs),
                    name=f"serving-worker-{i}",
                )
                proc.start()
                procs.append(proc)
            log.info(
                "%d serving workers on %s:%d (pids %s), metrics on ports %s",
                n,
                settings.serving.host,
                port,
                ", ".join(str(p.pid) for p in procs),
                settings.serving_metrics_ports or "off",
            )
            failed = _supervise(procs, ready, stop_requested)
    finally:
        failed = _stop_all(procs, settings.serving.shutdown_grace_s + _STOP_MARGIN_S) or failed
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _supervise(procs: list[Any], ready: Any, stop_requested: threading.Event) -> bool:
    """Wait for a stop request (False) or a worker that exits by itself (True)."""
    waiting = len(procs)
    while not stop_requested.is_set():
        multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
        while waiting and not ready.empty():
            index, pid = ready.get()
            waiting -= 1
            log.info("worker %d (pid %d) ready", index, pid)
        dead = [p for p in procs if not p.is_alive()]
        if dead and not stop_requested.is_set():
            for p in dead:
                log.error("%s (pid %d) exited with %s", p.name, p.pid, p.exitcode)
            log.error("stopping the other workers")
            return True
    log.info("stopping %d serving workers", len(procs))
    return False


def _stop_all(procs: list[Any], timeout_s: float) -> bool:
    """SIGTERM every live worker, wait, SIGKILL the rest; True if one did not exit 0
    (a worker stopped by our SIGTERM before its own handler was set counts as 0)."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("%s (pid %d) did not stop in %.0fs: killed", p.name, p.pid, timeout_s)
            p.kill()
            p.join(5.0)
    return any(p.exitcode not in (0, -signal.SIGTERM) for p in procs)
