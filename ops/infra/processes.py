"""Process plumbing shared by the service modules: pidfiles, detached start, stop, waits.

A service started here runs in its own session (so a Ctrl-C in the starting shell does
not reach it), writes stdout/stderr to ``<run_dir>/logs/<name>.log`` and is tracked by
``<run_dir>/pids/<name>.pid``. A pidfile is trusted only while its process is alive and
its command line still contains a marker string unique to the service instance (its
config file or data dir): after a reboot or a crash the pid may belong to something else,
which must never be signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagedProcess:
    """Where one service keeps its pidfile and log under the run dir."""

    name: str
    run_dir: Path
    # The pidfile is believed only while /proc/<pid>/cmdline contains one of these.
    markers: tuple[str, ...]

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the live process this pidfile describes, else ``None``."""
        pid = read_pid(self.pidfile)
        if pid is None or not pid_alive(pid):
            return None
        cmdline = process_cmdline(pid)
        if not any(m in cmdline for m in self.markers):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def started_process_alive(self) -> bool:
        """Whether the process this pidfile names is alive, markers aside (for start-up
        waits, right after we wrote the pidfile ourselves)."""
        pid = read_pid(self.pidfile)
        return pid is not None and pid_alive(pid)

    def clear_stale_pidfile(self) -> None:
        if self.pidfile.exists() and not self.is_running():
            log.info("%s: removing stale pidfile %s", self.name, self.pidfile)
            self.pidfile.unlink(missing_ok=True)

    def start(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``cmd`` detached unless already running; return its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.clear_stale_pidfile()
        return start_detached(cmd, pidfile=self.pidfile, logfile=self.logfile, env=env, cwd=cwd)

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``. True if a process was stopped."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        stop_pid(pid, timeout_s=timeout_s, name=self.name)
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.logfile, lines)


# --- pids ----------------------------------------------------------------------------


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def write_pid(pidfile: Path, pid: int) -> None:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is our exited child. True if it was reaped."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 (after the parenthesised command name) is the state; Z = zombie.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


# --- start / stop --------------------------------------------------------------------


def start_detached(
    cmd: Sequence[str],
    *,
    pidfile: Path,
    logfile: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``cmd`` in a new session with output appended to ``logfile``; write pidfile."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(logfile, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    write_pid(pidfile, proc.pid)
    log.info("started pid %d: %s (log %s)", proc.pid, " ".join(cmd), logfile)
    return proc.pid


def lower_session_priority(pid: int, niceness: int) -> bool:
    """Give the session of ``pid`` (a process started in a session of its own) CPU
    priority ``niceness`` against other sessions; True if the kernel took it.

    With autogroup scheduling (``kernel.sched_autogroup_enabled``, the default of most
    distributions) each session is a scheduling group that shares the CPU fairly with
    the others, and a process's own nice value only ranks it inside its group: the
    group's nice (``/proc/<pid>/autogroup``) is what weighs it against another session's.
    Without autogroups the process nice (``nice -n`` at start) is what counts."""
    if niceness <= 0:
        return False
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
    except OSError:  # no autogroups here, or the process is gone
        return False
    return True


def stop_pid(pid: int, *, timeout_s: float = 20.0, name: str = "process") -> None:
    """SIGTERM ``pid`` (its process group if it leads one), SIGKILL after ``timeout_s``."""

    def send(sig: signal.Signals) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), timeout_s, what=f"{name} (pid {pid}) to exit")
    except TimeoutError:
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, pid, timeout_s)
        send(signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10.0, what=f"{name} (pid {pid}) to die")


# --- waiting and probing -------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.1,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` after ``timeout_s``.

    ``abort`` is polled too: a non-empty string it returns (e.g. "process exited") ends
    the wait early with a ``RuntimeError`` carrying that text. Exceptions raised by the
    predicate count as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")
        time.sleep(interval_s)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def refuse_busy_ports(host: str, ports: Iterable[int], run_path: Path, hint: str) -> None:
    """Raise if something already accepts connections on one of ``ports``: called when
    none of ours runs, so it is a process not started from ``run_path``, whose data and
    settings are not ours to adopt. ``hint`` ends the message: what to do about it."""
    for port in ports:
        if port_open(host, port):
            raise RuntimeError(
                f"{host}:{port} is already in use by a process not started from {run_path}{hint}"
            )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it; racy by nature, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` (first entry of a comma-separated list) -> ``(host, port)``."""
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
