"""The benchmark's private stack, machine facts, CPU accounting and result files.

The stack is configured the way ``tests/conftest.py`` configures a test session: a
fresh temporary run dir whose ``jars/`` links to the project's ``.run/jars``, and free
ports for Redis, Kafka (client + KRaft controller), Flink (REST + RPC) and the gRPC
server, all bound to 127.0.0.1. Nothing touches a developer's running stack.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops import stack
from ops.infra.jars import ensure_jars
from ops.infra.kafka_broker import KAFKA
from ops.infra.processes import free_port
from ops.infra.redis_server import REDIS
from ops.infra.service import ProcessService
from personalization.settings import (
    PROJECT_ROOT,
    PrioritySettings,
    Settings,
)

SHARED_JARS_DIR = PROJECT_ROOT / ".run" / "jars"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The bench server answers Recommend only: Collect (Kafka producer) is not measured.
BENCH_SERVER = stack.Component("grpc-server", "serving.server", ("--no-collector",))

_COMPONENTS = {c.name: c for c in (stack.FLINK_JOB, stack.WRITER, BENCH_SERVER)}
_SERVICES: dict[str, ProcessService] = {s.name: s for s in (REDIS, KAFKA)}

Say = Callable[[str], None]


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- private settings ----------------------------------------------------------------


def _distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# Benches of the write path's own speed. The local stack runs the job and the writer at a
# lower CPU priority than Kafka, Redis and serving (settings.priority), which is right
# beside a server but makes them yield to the broker and the traffic sender here: the
# ingest bench, alternated, measured 556 / 513 events/s at the stack's priorities and
# 667 / 648 at nice 0 (README "Figures", eighth session). The trivial baseline job runs
# at nice 0 too, so only equal priorities compare.
THROUGHPUT_SCENARIOS = ("ingest", "freshness", "all")


def equal_priority(settings: Settings) -> Settings:
    """``settings`` with every component of the stack at nice 0."""
    level = dict.fromkeys(PrioritySettings.model_fields, 0)
    return settings.model_copy(update={"priority": settings.priority.model_copy(update=level)})


def private_settings(run_dir: Path) -> Settings:
    """Settings for a private stack: ``run_dir``, free loopback ports, shared jars."""
    SHARED_JARS_DIR.mkdir(parents=True, exist_ok=True)
    jars_link = run_dir / "jars"
    if not jars_link.exists():
        jars_link.symlink_to(SHARED_JARS_DIR, target_is_directory=True)
    ports = _distinct_free_ports(10)
    redis_port, kafka_port, controller_port, rest_port, rpc_port, grpc_port = ports[:6]
    # Sections as dicts, not section models: pydantic-settings deep-merges them with the
    # environment, so PZ_FLINK__*, PZ_KAFKA__*, ... overrides still reach the private
    # stack (a section model would replace the whole section, dropping them). What
    # points outside the stack is pinned: a developer's PZ_REDIS__CLUSTER_NODES or
    # checkpoint, history or registry path must not send the bench to their own data.
    sections: dict[str, Any] = dict(
        redis={"host": "127.0.0.1", "port": redis_port, "cluster_nodes": ()},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}", "controller_port": controller_port},
        flink={"rest_port": rest_port, "rpc_port": rpc_port, "checkpoint_dir": ""},
        history={"dir": ""},
        feast={"registry_path": ""},
        serving={"host": "127.0.0.1", "port": grpc_port},
        # Its own metrics ports, so a developer's running stack keeps its own.
        metrics={
            "job_port": ports[6],
            "writer_port": ports[7],
            "serving_port": ports[8],
            "dashboard_port": ports[9],
        },
    )
    return Settings(run_dir=str(run_dir), **sections)


@dataclass
class BenchStack:
    """Starts pieces of the stack on demand; :meth:`stop` stops whatever was started."""

    settings: Settings
    keep_run_dir: bool = False
    started: list[str] = field(default_factory=list)
    feast_applied: bool = False

    @classmethod
    def create(cls, keep_run_dir: bool = False) -> BenchStack:
        run_dir = Path(tempfile.mkdtemp(prefix="pz-bench-"))
        return cls(private_settings(run_dir), keep_run_dir=keep_run_dir)

    @property
    def run_path(self) -> Path:
        return self.settings.run_path

    def start_redis(self) -> None:
        if "redis" in self.started:
            return
        REDIS.start(self.settings)
        self.started.append("redis")
        say(f"redis up on {REDIS.address(self.settings)}")

    def start_kafka(self) -> None:
        if "kafka" in self.started:
            return
        ensure_jars(self.settings)
        self.started.append("kafka")  # before start: a half-started broker is stopped too
        KAFKA.start(self.settings)  # the broker and every topic of the pipeline
        say(f"kafka up on {self.settings.kafka.bootstrap_servers}")

    def service_pid(self, name: str) -> int | None:
        """The pid of this stack's ``redis`` or ``kafka``, None if it is not running."""
        return _SERVICES[name].process(self.settings).pid()

    def feast_apply(self) -> None:
        if not self.feast_applied:
            stack.feast_apply(self.settings)
            self.feast_applied = True
            say(f"feast apply done (registry {self.settings.registry_file})")

    def start_component(self, component: stack.Component) -> int:
        self.started.append(component.name)
        pid = stack.start_component(self.settings, component)
        say(f"{component.name}: pid {pid} (log {component.process(self.settings).logfile})")
        return pid

    def component_pid(self, component: stack.Component) -> int | None:
        return component.process(self.settings).pid()

    def stop_component(self, component: stack.Component) -> None:
        if component.name in self.started:
            if component.process(self.settings).stop():
                say(f"{component.name}: stopped")
            self.started.remove(component.name)

    def stop(self) -> None:
        """Stop everything this stack started, newest first; never raises."""
        for name in reversed(list(self.started)):
            try:
                if name in _SERVICES:
                    _SERVICES[name].stop(self.settings)
                else:
                    _COMPONENTS[name].process(self.settings).stop()
                say(f"{name}: stopped")
            except Exception as exc:  # keep stopping the rest
                say(f"{name}: stop failed: {exc!r}")
        self.started.clear()
        if not self.keep_run_dir:
            shutil.rmtree(self.run_path, ignore_errors=True)
        else:
            say(f"run dir kept: {self.run_path}")

    def log_tail(self, component: stack.Component, lines: int = 30) -> str:
        return component.process(self.settings).log_tail(lines)


# --- machine facts -------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    import grpc

    try:
        import feast

        feast_version = feast.__version__
    except Exception:  # pragma: no cover - feast is a dependency
        feast_version = "?"
    load1, load5, load15 = os.getloadavg()
    # What the machine was already doing: a quiet box reads ~0-10 % here.
    meter = CpuMeter({}).start()
    time.sleep(2.0)
    busy_before = meter.stop()["machine (all cores)"]
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_gb": _mem_total_gb(),
        "loadavg_at_start": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "cpu_busy_before_start_pct_of_all_cores": busy_before,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "feast": feast_version,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- CPU accounting ------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat_entries(directory: str | Path = "/proc") -> Iterator[tuple[int, str, list[str]]]:
    """(pid, command name, the ``stat`` fields after the name) per live process, or with
    ``directory="/proc/<pid>/task"`` (tid, thread name, fields) per thread of ``pid``.

    After the name the fields are: state(3) ppid(4) pgrp(5) session(6) ... utime(14)
    stime(15), i.e. indices 0, 1, 2, 3 ... 11, 12 here.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:  # the process of a task dir has exited
        return
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        head, _, rest = raw.rpartition(")")
        yield int(entry.name), head.partition("(")[2], rest.split()


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every live (not zombie) process in session ``sid``."""
    return sorted(
        (pid, comm)
        for pid, comm, fields in proc_stat_entries()
        if fields and fields[0] not in ("Z", "X") and int(fields[3]) == sid
    )


def proc_status_kb(pid: int) -> dict[str, int]:
    """The resident / swapped sizes of ``/proc/<pid>/status`` (kB); empty once it exited."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap"):
                out[key] = int(value.split()[0])
    return out


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (session id, utime + stime in ticks) for every live process."""
    return {
        pid: (int(fields[3]), int(fields[11]) + int(fields[12]))
        for pid, _, fields in proc_stat_entries()
    }


def _system_busy() -> tuple[int, int]:
    """(busy ticks, total ticks) of all CPUs from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


class CpuMeter:
    """CPU used by process sessions (a service and all its children) over an interval.

    Every service the stack starts leads its own session, so a session id names e.g.
    the Flink job together with its JVM. Reported as % of one core.
    """

    def __init__(
        self,
        sessions: dict[str, int],
        *,
        child_label: str | None = None,
        own_pid: int | None = None,
    ) -> None:
        self.sessions = {name: sid for name, sid in sessions.items() if sid}
        # A child of this process that exits (and is reaped) inside the interval is
        # gone from /proc when the interval ends: count it from RUSAGE_CHILDREN.
        self.child_label = child_label
        self.own_pid = own_pid if own_pid is not None else os.getpid()
        self._start = 0.0
        self._ticks: dict[str, int] = {}
        self._own = 0
        self._children = 0.0
        self._sys = (0, 0)

    @staticmethod
    def _children_cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def _sample(self) -> tuple[dict[str, int], int]:
        stats = _proc_stats()
        by_session: dict[str, int] = {}
        for name, sid in self.sessions.items():
            by_session[name] = sum(t for s, t in stats.values() if s == sid)
        own = stats.get(self.own_pid, (0, 0))[1]
        return by_session, own

    def start(self) -> CpuMeter:
        self._start = time.monotonic()
        self._ticks, self._own = self._sample()
        self._children = self._children_cpu_s()
        self._sys = _system_busy()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = max(1e-6, time.monotonic() - self._start)
        ticks, own = self._sample()
        busy, total = _system_busy()
        out = {
            name: round(100.0 * (ticks[name] - self._ticks.get(name, 0)) / _CLK_TCK / elapsed, 1)
            for name in ticks
        }
        if self.child_label:
            child_s = self._children_cpu_s() - self._children
            out[self.child_label] = round(100.0 * child_s / elapsed, 1)
        out["bench-driver"] = round(100.0 * (own - self._own) / _CLK_TCK / elapsed, 1)
        d_total = max(1, total - self._sys[1])
        ncpu = os.cpu_count() or 1
        machine = round(100.0 * ncpu * (busy - self._sys[0]) / d_total, 1)
        # Everything not named above: the kernel's share for these processes, and any
        # other tenant of the machine (the reason to read this column before the others).
        out["others"] = round(max(0.0, machine - sum(out.values())), 1)
        out["machine (all cores)"] = machine
        return out


# --- output --------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(values)
        )

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def venv_on_path() -> None:
    """PyFlink starts Python workers as ``python``: the venv must come first on PATH."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path


def scrape(url: str, timeout_s: float = 3.0) -> dict[str, float]:
    """Prometheus text -> sample name (labels joined in braces) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def sample_labels(key: str) -> tuple[str, dict[str, str]]:
    """A :func:`scrape` key split into the sample's name and its labels."""
    name, _, labels = key.partition("{")
    pairs = (kv.split("=", 1) for kv in labels.rstrip("}").split(",") if kv)
    return name, {k: v for k, v in pairs}


def metric_sum(metrics: dict[str, float], name: str, **match: str) -> float:
    """Sum of the :func:`scrape` samples named ``name`` whose labels include ``match``."""
    total = 0.0
    for key, value in metrics.items():
        base, labels = sample_labels(key)
        if base != name or math.isnan(value):
            continue
        if all(labels.get(k) == v for k, v in match.items()):
            total += value
    return total


def drain_queue(q: Any, into: list[dict[str, Any]]) -> None:
    """Move everything a child process has put on ``q`` so far into ``into``."""
    while True:
        try:
            into.append(q.get_nowait())
        except queue.Empty:
            return


def join_draining(proc: Any, q: Any, into: list[dict[str, Any]], timeout_s: float) -> None:
    """Join a child that reports on ``q``, emptying the queue meanwhile (a child with
    unflushed queue items cannot exit)."""
    deadline = time.monotonic() + timeout_s
    while proc.is_alive() and time.monotonic() < deadline:
        drain_queue(q, into)
        proc.join(timeout=0.5)
    drain_queue(q, into)
