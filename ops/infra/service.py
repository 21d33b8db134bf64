"""The one interface of infra control: a :class:`Service` is started, stopped, probed and
located the same way whatever runs behind it (Redis, Kafka, the Flink cluster).

A service holds no state of its own: every call takes the :class:`Settings` that say
where it listens and which run dir it lives in, so one service object serves any number
of stacks (the developer's, a test session's, a benchmark's) and pickles by reference.

:class:`ProcessService` is the implementation for a service that is one process started
and tracked here (Redis, Kafka): the start / stop / status logic they share, with the
parts that differ (command, health probe, ports) passed in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ops.infra.processes import ManagedProcess, refuse_busy_ports, wait_until
from personalization.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What one service is doing right now; ``str()`` is the line ``status`` prints."""

    name: str
    address: str
    data_dir: Path
    # The pid of our process (for Flink: the JobManager); None when none of ours runs.
    pid: int | None = None
    # Answers its health probe (Redis PING, Kafka metadata, a Flink TaskManager).
    healthy: bool = False
    # What the probe found, as printed after the address.
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __str__(self) -> str:
        if self.pid is None:
            return f"{self.name}: stopped ({self.address})"
        facts = [f"running pid {self.pid} on {self.address}", self.detail, f"data {self.data_dir}"]
        return f"{self.name}: " + ", ".join(f for f in facts if f)


@runtime_checkable
class Service(Protocol):
    """A piece of infrastructure the stack runs on."""

    @property
    def name(self) -> str: ...

    def address(self, settings: Settings) -> str:
        """Where clients reach it (``host:port`` or a URL)."""
        ...

    def data_dir(self, settings: Settings) -> Path:
        """Where it keeps its data, under ``settings.run_path``."""
        ...

    def log_path(self, settings: Settings) -> Path:
        """Its log file (or, for a service of several processes, their log dir)."""
        ...

    def start(self, settings: Settings) -> None:
        """Bring it up and ready for the pipeline; one already up is left alone."""
        ...

    def stop(self, settings: Settings) -> bool:
        """Stop ours; True if one was running."""
        ...

    def status(self, settings: Settings) -> ServiceStatus:
        """What it is doing; a stopped service says so (never raises for being down)."""
        ...

    def healthy(self, settings: Settings) -> bool:
        """Whether it answers its health probe right now."""
        ...


@dataclass(frozen=True)
class Launch:
    """How to start a service's process: what :attr:`ProcessService.prepare` returns."""

    command: Sequence[str]
    cwd: Path
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ProcessService:
    """A :class:`Service` that is one process started here and tracked by its pidfile.

    The fields are module-level functions of the service's module (so the object pickles
    by reference); see ``redis_server.REDIS`` and ``kafka_broker.KAFKA``.
    """

    name: str
    process: Callable[[Settings], ManagedProcess]
    # (host, port) clients connect to.
    endpoint: Callable[[Settings], tuple[str, int]]
    # Every port it binds on the endpoint's host: refused when something else holds one.
    ports: Callable[[Settings], Sequence[int]]
    data_dir: Callable[[Settings], Path]
    healthy: Callable[[Settings], bool]
    # What a passing health probe is reported as ("PING ok").
    healthy_text: str
    # Writes what a fresh start needs (dirs, configs, storage) and says how to start.
    prepare: Callable[[Settings], Launch]
    # Appended to "host:port is already in use by ...": what to do about it.
    busy_hint: str
    start_timeout_s: float
    stop_timeout_s: float
    poll_interval_s: float = 0.1
    # Run after every start: what "ready for the pipeline" needs beyond the process.
    ready: Callable[[Settings], object] | None = None

    def address(self, settings: Settings) -> str:
        host, port = self.endpoint(settings)
        return f"{host}:{port}"

    def log_path(self, settings: Settings) -> Path:
        return self.process(settings).logfile

    def start(self, settings: Settings) -> None:
        self.start_process(settings)
        if self.ready is not None:
            self.ready(settings)

    def start_process(self, settings: Settings, timeout_s: float | None = None) -> None:
        """Start the process unless ours is already up and healthy (then: no-op)."""
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        proc = self.process(settings)
        host, port = self.endpoint(settings)
        what = f"{self.name} on {host}:{port}"
        if proc.is_running():
            wait_until(lambda: self.healthy(settings), timeout_s, what=what)
            log.info("%s already running on %s:%d (pid %s)", self.name, host, port, proc.pid())
            return
        proc.clear_stale_pidfile()
        refuse_busy_ports(host, self.ports(settings), settings.run_path, self.busy_hint)
        launch = self.prepare(settings)
        proc.start(launch.command, env=launch.env, cwd=launch.cwd)

        def exited() -> str | None:
            # Only a dead process counts: while redis rewrites its process title, its
            # /proc cmdline can briefly match no marker (a start-up race seen in CI).
            if proc.started_process_alive():
                return None
            return f"{self.name} exited; log tail:\n{proc.log_tail()}"

        try:
            wait_until(
                lambda: self.healthy(settings),
                timeout_s,
                interval_s=self.poll_interval_s,
                what=what,
                abort=exited,
            )
        except BaseException:
            proc.stop()  # do not leave a half-started server behind
            raise
        log.info("%s up on %s:%d (pid %s)", self.name, host, port, proc.pid())

    def stop(self, settings: Settings, timeout_s: float | None = None) -> bool:
        """SIGTERM (Redis fsyncs its AOF, Kafka shuts down in a controlled way), SIGKILL
        after the timeout. True if one was running."""
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        return self.process(settings).stop(timeout_s=timeout_s)

    def status(self, settings: Settings) -> ServiceStatus:
        pid = self.process(settings).pid()
        healthy = pid is not None and self.healthy(settings)
        return ServiceStatus(
            name=self.name,
            address=self.address(settings),
            data_dir=self.data_dir(settings),
            pid=pid,
            healthy=healthy,
            detail="" if pid is None else self.healthy_text if healthy else "not answering",
        )


def reset(service: Service, settings: Settings) -> None:
    """Stop ``service`` and delete its data dir (Kafka: topics, offsets, KRaft metadata;
    it is formatted afresh on the next start)."""
    service.stop(settings)
    shutil.rmtree(service.data_dir(settings), ignore_errors=True)
