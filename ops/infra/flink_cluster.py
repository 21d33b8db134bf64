"""A standalone Flink session cluster from the scripts inside the apache-flink wheel.

``pyflink/bin/start-cluster.sh`` starts one JobManager and one TaskManager (workers file
= ``localhost``) with ``FLINK_CONF_DIR=<run_dir>/flink-conf``, a ``config.yaml`` written
here from settings:

* JobManager RPC on 127.0.0.1:``settings.flink.rpc_port``, REST/web UI on
  127.0.0.1:``settings.flink.rest_port``; pid files, logs and tmp dirs under
  ``<run_dir>/flink`` (Flink's default pid dir is /tmp, shared by every cluster);
* 2 task slots; JobManager 1 GB, TaskManager 2 GB process memory with a small managed
  fraction (the jobs keep heap state; thread mode runs Python inside the TM JVM), so
  the cluster fits beside Kafka (512 MB heap) and Redis on 2 cores;
* ``python.executable`` / ``python.client.executable`` = this interpreter (the venv),
  ``python.execution-mode`` = ``settings.flink.execution_mode`` (thread);
* ``FLINK_LIB_DIR`` = ``<run_dir>/flink/lib``: the wheel's ``lib/`` plus ``opt/flink-python``
  (see :func:`ensure_lib_dir`).

Jobs go through ``pyflink/bin/flink run --detached --python <file> --jarfile <connector>``
(:func:`submit_python_job`); status and cancel use the REST API.

    personalize infra start|stop|status flink
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flink_jobs.python_env import embedded_python_path
from ops.infra.jars import ensure_jars, java_env
from ops.infra.processes import (
    pid_alive,
    process_cmdline,
    read_pid,
    refuse_busy_ports,
    stop_pid,
    wait_until,
)
from ops.infra.service import ServiceStatus
from personalization.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
SUBMIT_TIMEOUT_S = 300.0
JOBMANAGER_MEMORY = "1024m"
TASKMANAGER_MEMORY = "2048m"
TASK_SLOTS = 2
TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "CANCELED"})
_JOB_ID_RE = re.compile(r"JobID ([0-9a-f]{32})")


# --- locations -----------------------------------------------------------------------


def pyflink_home() -> Path:
    """The installed wheel's ``pyflink`` dir: it is a Flink distribution (bin/, lib/...)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("apache-flink is not installed in this interpreter")
    return Path(spec.origin).resolve().parent


def bin_dir() -> Path:
    return pyflink_home() / "bin"


def conf_dir(settings: Settings) -> Path:
    return settings.run_path / "flink-conf"


def flink_dir(settings: Settings) -> Path:
    return settings.run_path / "flink"


def log_dir(settings: Settings) -> Path:
    return flink_dir(settings) / "log"


def pid_dir(settings: Settings) -> Path:
    return flink_dir(settings) / "pids"


def lib_dir(settings: Settings) -> Path:
    return flink_dir(settings) / "lib"


def rest_url(settings: Settings, path: str = "") -> str:
    return f"http://{HOST}:{settings.flink.rest_port}{path}"


# --- configuration -------------------------------------------------------------------


def _default_java_opts() -> str:
    """The wheel's ``env.java.opts.all`` (the --add-opens Flink needs on Java 17)."""
    default = yaml.safe_load((pyflink_home() / "conf" / "config.yaml").read_text()) or {}
    opts = default.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
    return str(opts)


def flink_config(settings: Settings, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The cluster's ``config.yaml`` entries; ``extra`` entries are added or override."""
    f = settings.flink
    fd = flink_dir(settings)
    return {
        "env.java.opts.all": _default_java_opts(),
        "env.pid.dir": str(pid_dir(settings)),
        "env.log.dir": str(log_dir(settings)),
        "io.tmp.dirs": str(fd / "tmp"),
        "web.tmpdir": str(fd / "web"),
        "jobmanager.rpc.address": HOST,
        "jobmanager.rpc.port": f.rpc_port,
        "jobmanager.bind-host": HOST,
        "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": HOST,
        "taskmanager.host": HOST,
        "taskmanager.numberOfTaskSlots": TASK_SLOTS,
        "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
        "taskmanager.memory.managed.fraction": 0.1,
        "rest.address": HOST,
        "rest.bind-address": HOST,
        "rest.port": f.rest_port,
        "parallelism.default": f.parallelism,
        "execution.checkpointing.dir": settings.checkpoint_path.as_uri(),
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": f.execution_mode,
        **(extra or {}),
    }


def write_conf(settings: Settings, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.yaml``, masters, workers and the wheel's log4j files; return dir."""
    cdir = conf_dir(settings)
    cdir.mkdir(parents=True, exist_ok=True)
    for d in (log_dir(settings), pid_dir(settings), flink_dir(settings) / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    wheel_conf = pyflink_home() / "conf"
    for src in wheel_conf.iterdir():
        if src.name.startswith(("log4j", "logback")):
            shutil.copyfile(src, cdir / src.name)
    header = "# Written by ops.infra.flink_cluster; regenerated on every start.\n"
    body = yaml.safe_dump(flink_config(settings, extra), sort_keys=False, width=1000)
    (cdir / "config.yaml").write_text(header + body)
    (cdir / "masters").write_text(f"{HOST}:{settings.flink.rest_port}\n")
    (cdir / "workers").write_text("localhost\n")
    return cdir


def ensure_lib_dir(settings: Settings) -> Path:
    """``FLINK_LIB_DIR`` of this cluster: the wheel's ``lib/`` jars plus ``opt/flink-python``.

    ``flink run --python`` ships flink-python only as a user jar through
    ``pipeline.jars``; a job that sets ``pipeline.jars`` itself (ours does, for the Kafka
    connector) replaces that list, and the JobManager then fails to deserialize the
    job's Python operators (``ClassNotFoundException: ...EmbeddedPythonProcessOperator``).
    With flink-python on the cluster's own classpath -- the usual layout of a PyFlink
    cluster image -- that cannot happen. Symlinks, so nothing is copied.
    """
    ldir = lib_dir(settings)
    ldir.mkdir(parents=True, exist_ok=True)
    home = pyflink_home()
    wanted = {p.name: p for p in (home / "lib").glob("*.jar")}
    wanted.update({p.name: p for p in (home / "opt").glob("flink-python*.jar")})
    for link in ldir.iterdir():
        if link.name not in wanted or link.resolve() != wanted[link.name].resolve():
            link.unlink()
    for name, target in wanted.items():
        if not (ldir / name).exists():
            (ldir / name).symlink_to(target)
    return ldir


def flink_env(settings: Settings) -> dict[str, str]:
    """Environment for the wheel's scripts: JAVA_HOME, conf/log dirs, the venv first."""
    env = dict(os.environ)
    env.update(java_env())
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
    env["FLINK_HOME"] = str(pyflink_home())
    env["FLINK_CONF_DIR"] = str(conf_dir(settings))
    env["FLINK_LIB_DIR"] = str(ensure_lib_dir(settings))
    env["FLINK_LOG_DIR"] = str(log_dir(settings))
    env["FLINK_PID_DIR"] = str(pid_dir(settings))
    env["PYFLINK_PYTHON"] = sys.executable
    # Thread mode embeds Python in the TaskManager JVM, which inherits this.
    env["PYTHONPATH"] = embedded_python_path()
    return env


# --- REST ----------------------------------------------------------------------------


def _rest(
    settings: Settings, path: str, method: str = "GET", timeout_s: float = 5.0
) -> dict[str, Any]:
    req = urllib.request.Request(rest_url(settings, path), method=method)
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body = resp.read()
    return json.loads(body) if body else {}


def overview(settings: Settings) -> dict[str, Any] | None:
    """``GET /overview`` (taskmanagers, slots, jobs), or ``None`` if REST is down."""
    try:
        return _rest(settings, "/overview", timeout_s=2.0)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _daemon_pids(settings: Settings) -> list[int]:
    """Live pids of this cluster's JobManager/TaskManagers (from its own pid dir)."""
    pids: list[int] = []
    marker = str(conf_dir(settings))
    for pidfile in pid_dir(settings).glob("flink-*.pid"):
        for line in pidfile.read_text().split():
            if line.isdigit():
                pid = int(line)
                if pid_alive(pid) and marker in process_cmdline(pid):
                    pids.append(pid)
    return pids


def _jobmanager_pid(settings: Settings) -> int | None:
    for pidfile in pid_dir(settings).glob("flink-*-standalonesession.pid"):
        pid = read_pid(pidfile)
        if pid and pid_alive(pid) and str(conf_dir(settings)) in process_cmdline(pid):
            return pid
    return None


def _run_script(settings: Settings, script: str, *args: str, timeout_s: float = 120.0) -> str:
    cmd = ["bash", str(bin_dir() / script), *args]
    result = subprocess.run(
        cmd,
        env=flink_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed ({result.returncode}):\n{out}")
    if out:
        log.info("%s: %s", script, out)
    return out


def _has_taskmanager(settings: Settings) -> bool:
    ov = overview(settings)
    return ov is not None and int(ov.get("taskmanagers", 0)) >= 1


def start(
    settings: Settings,
    timeout_s: float = START_TIMEOUT_S,
    *,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Start JobManager + TaskManager unless this cluster is up; return ``/overview``.

    ``extra_config``: further ``config.yaml`` entries for a fresh start (e.g. the
    TaskManager-kill test shortens ``heartbeat.interval``); ignored if already up.
    """
    if _jobmanager_pid(settings) is not None:
        wait_until(lambda: overview(settings) is not None, timeout_s, what="flink REST /overview")
        try:
            wait_until(lambda: _has_taskmanager(settings), 30.0, what="a taskmanager")
        except TimeoutError:
            log.warning("flink jobmanager up without a taskmanager: starting one")
            _run_script(settings, "taskmanager.sh", "start")
    else:
        refuse_busy_ports(
            HOST,
            (settings.flink.rest_port, settings.flink.rpc_port),
            settings.run_path,
            "; stop it or set PZ_FLINK__REST_PORT / PZ_FLINK__RPC_PORT.",
        )
        # Stale pid files would make the daemon script count phantom instances.
        for pidfile in pid_dir(settings).glob("flink-*.pid"):
            pidfile.unlink()
        write_conf(settings, extra_config)
        _run_script(settings, "start-cluster.sh")

    def jm_died() -> str | None:
        if _jobmanager_pid(settings) is not None:
            return None
        logs = sorted(log_dir(settings).glob("*standalonesession*.log"))
        tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
        return f"flink jobmanager exited; log tail:\n{tail}"

    wait_until(
        lambda: _has_taskmanager(settings),
        timeout_s,
        interval_s=0.5,
        what=f"flink cluster at {rest_url(settings)} with a taskmanager",
        abort=jm_died,
    )
    ov = overview(settings)
    assert ov is not None
    log.info("flink cluster up at %s: %s", rest_url(settings), ov)
    return ov


def ensure_running(settings: Settings) -> dict[str, Any]:
    return start(settings)


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """``stop-cluster.sh``, then SIGTERM/SIGKILL any daemon of ours still alive."""
    pids = _daemon_pids(settings)
    if not pids:
        return False
    write_conf(settings)  # the stop script reads config.yaml for the pid dir
    try:
        _run_script(settings, "stop-cluster.sh", timeout_s=timeout_s + 30)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log.warning("stop-cluster.sh: %s", exc)
    for pid in _daemon_pids(settings):
        stop_pid(pid, timeout_s=timeout_s, name="flink daemon")
    for pidfile in pid_dir(settings).glob("flink-*.pid"):
        pidfile.unlink(missing_ok=True)
    return True


# --- jobs ----------------------------------------------------------------------------


def _python_entry(module_or_file: str | Path) -> Path:
    """A ``.py`` path as is, else a module name resolved to its source file."""
    path = Path(module_or_file)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(path)
        return path.resolve()
    spec = importlib.util.find_spec(str(module_or_file))
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"no Python source for module {module_or_file!r}")
    return Path(spec.origin).resolve()


def submit_python_job(
    settings: Settings,
    module_or_file: str | Path,
    args: Sequence[str] = (),
    *,
    jars: Sequence[Path] = (),
    parallelism: int | None = None,
    timeout_s: float = SUBMIT_TIMEOUT_S,
) -> str:
    """Submit a PyFlink job detached to this cluster; return its job id.

    ``module_or_file`` is a ``.py`` file or a module name (``flink_jobs.user_features_job``
    -- resolved to its file: the packages are installed in the venv that the cluster's
    ``python.executable`` points at, so nothing else needs shipping). The Kafka connector
    jar (``settings.kafka_connector_jar_path``) is always attached with ``--jarfile``.
    """
    entry = _python_entry(module_or_file)
    connector = ensure_jars(settings).flink_connector
    cmd = [
        "bash",
        str(bin_dir() / "flink"),
        "run",
        "--detached",
        "--python",
        str(entry),
        "--jarfile",
        str(connector),
        "--pyExecutable",
        sys.executable,
        "--pyClientExecutable",
        sys.executable,
    ]
    for jar in jars:
        cmd += ["--classpath", Path(jar).resolve().as_uri()]
    if parallelism is not None:
        cmd += ["--parallelism", str(parallelism)]
    # "--" ends Flink's option parsing. Without it a job argument that is a prefix of a
    # Flink option is taken by Flink and silently dropped: `flink run --python job.py
    # --restore latest` hands the job no arguments at all (--restore matches --restoreMode).
    if args:
        cmd += ["--", *args]
    log.info("submitting: %s", " ".join(cmd))
    # Own process group: the CLI JVM starts a Python driver process, and a timeout must
    # not leave either of them behind (subprocess.run would kill only the JVM).
    proc = subprocess.Popen(
        cmd,
        env=flink_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=str(entry.parent),
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(f"flink run timed out after {timeout_s:.0f}s:\n{out[-6000:]}") from None
    match = _JOB_ID_RE.search(out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"flink run failed ({proc.returncode}):\n{out[-6000:]}")
    return match.group(1)


def list_jobs(settings: Settings) -> list[dict[str, Any]]:
    """``GET /jobs/overview``: one dict per job (jid, name, state, ...)."""
    return list(_rest(settings, "/jobs/overview").get("jobs", []))


def job_status(settings: Settings, job_id: str) -> str:
    """The job's state: CREATED, RUNNING, FAILED, CANCELED, FINISHED, ..."""
    return str(_rest(settings, f"/jobs/{job_id}")["state"])


def wait_for_job_state(
    settings: Settings, job_id: str, states: Sequence[str], timeout_s: float = 60.0
) -> str:
    """Wait until the job is in one of ``states``; a different terminal state raises."""
    wanted = set(states)
    seen: list[str] = []

    def reached() -> bool:
        state = job_status(settings, job_id)
        seen.append(state)
        return state in wanted

    def failed() -> str | None:
        if seen and seen[-1] in TERMINAL_STATES and seen[-1] not in wanted:
            return f"job {job_id} is {seen[-1]}"
        return None

    wait_until(reached, timeout_s, interval_s=0.5, what=f"job {job_id} in {wanted}", abort=failed)
    return seen[-1]


def cancel_job(settings: Settings, job_id: str, timeout_s: float = 60.0) -> None:
    """Cancel a job (``PATCH /jobs/<id>?mode=cancel``) and wait until it is terminal."""
    if job_status(settings, job_id) in TERMINAL_STATES:
        return
    _rest(settings, f"/jobs/{job_id}?mode=cancel", method="PATCH")
    wait_until(
        lambda: job_status(settings, job_id) in TERMINAL_STATES,
        timeout_s,
        interval_s=0.5,
        what=f"job {job_id} to cancel",
    )


def status(settings: Settings) -> ServiceStatus:
    pid = _jobmanager_pid(settings)
    ov = overview(settings) if pid is not None else None
    if ov is None:
        detail = "REST not answering"
    else:
        detail = (
            f"{ov.get('taskmanagers')} taskmanager(s), "
            f"{ov.get('slots-available')}/{ov.get('slots-total')} slots free, "
            f"{ov.get('jobs-running')} job(s) running"
        )
    return ServiceStatus(
        name="flink",
        address=rest_url(settings),
        data_dir=flink_dir(settings),
        pid=pid,
        healthy=ov is not None and int(ov.get("taskmanagers", 0)) >= 1,
        detail=detail,
    )


@dataclass(frozen=True)
class FlinkCluster:
    """The session cluster as a :class:`~ops.infra.service.Service`: JobManager and
    TaskManager are daemons of the wheel's scripts, tracked by Flink's own pid files
    (not one :class:`~ops.infra.processes.ManagedProcess`), hence a class of its own."""

    name: str = "flink"

    def address(self, settings: Settings) -> str:
        return rest_url(settings)

    def data_dir(self, settings: Settings) -> Path:
        return flink_dir(settings)

    def log_path(self, settings: Settings) -> Path:
        return log_dir(settings)

    def start(self, settings: Settings) -> None:
        start(settings)

    def stop(self, settings: Settings) -> bool:
        return stop(settings)

    def status(self, settings: Settings) -> ServiceStatus:
        return status(settings)

    def healthy(self, settings: Settings) -> bool:
        return _has_taskmanager(settings)


FLINK = FlinkCluster()
