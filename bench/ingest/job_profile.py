"""The job's Python as it runs inside Flink: py-spy samples of the job's JVM.

The in-process profile (:mod:`bench.ingest.profile`) times our operators' code without
Flink. What it cannot show is what each call into Flink costs from inside an operator
(emitting a record to a side output, reading and updating keyed state, registering a
timer): in thread mode those are calls from Python into the JVM, and the JVM's work
(serializing the record, writing it to the network buffer, the state backend) runs
within them. py-spy sees them as the Python frame that made the call, so sampling the
job's JVM (``--py-spy SECONDS``, during the steady window) gives their share of the
operator threads' time beside our own code's.

py-spy attaches with ptrace (root, or ``kernel.yama.ptrace_scope`` 0) and only reads
the process; the job runs unchanged. Its samples of threads with no Python frame (the
JVM's own threads between calls) are counted apart and left out of the shares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["PySpy", "java_pids", "summarize"]

# Calls into Flink, by the frame py-spy sees (PyFlink's embedded thread-mode classes).
FLINK_CALLS = {
    "SideOutputContext.collect": "emit to a side output",
    "ValueStateImpl.update": "keyed state: update",
    "ValueStateImpl.value": "keyed state: read",
    "MapStateImpl": "keyed state: map state",
    "TimerServiceImpl": "timers",
    "PickleDataConverter": "pickling a record or state value",
    "RowDataConverter": "converting a row",
}


def _binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def java_pids(session: int) -> list[int]:
    """The JVM processes of the session ``session`` (the job's MiniCluster or
    TaskManager, where thread mode runs the Python operators)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if comm == "java" and int(fields[3]) == session:
            out.append(int(entry.name))
    return sorted(out)


class PySpy:
    """One py-spy recording of ``pid`` for ``seconds``, raw (collapsed) stacks."""

    def __init__(
        self, pid: int, seconds: float, out: Path, rate: int = 200, gil: bool = False
    ) -> None:
        binary = _binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install '.[dev]')")
        self.out = out
        self.log = out.with_suffix(".log")
        args = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        args += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)]
        if gil:
            # Only the thread that holds the GIL: in thread mode every Python operator of
            # the JVM shares one interpreter, so this is the time that serialises them.
            args.append("--gil")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> Path | None:
        """The raw file once py-spy is done; None if it failed (its log says why)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        return self.out if code == 0 and self.out.exists() else None

    def failure(self) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""


def _name(frame: str) -> str:
    """``Class.method (path/file.py:line)`` -> ``Class.method (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.split(':')[0])})" if where else name


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the samples with a Python stack: per function inclusive and self, and
    the calls into Flink grouped by what they do (:data:`FLINK_CALLS`)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    flink: Counter[str] = Counter()
    pickling: Counter[str] = Counter()
    total = no_frames = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f.strip()]
        if not frames:
            no_frames += n
            continue
        total += n
        names = [_name(f) for f in frames]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
        # The outermost call into Flink on the stack takes the sample (a pickling
        # inside a state update is the update's).
        for name in names:
            group = next((g for key, g in FLINK_CALLS.items() if name.startswith(key)), None)
            if group is not None:
                flink[group] += n
                break
        caller = _pickling_caller(names)
        if caller is not None:
            pickling[caller] += n
    if total == 0:
        return {"samples": 0, "samples_without_python_frames": no_frames}

    def shares(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in counter.most_common(k)]

    return {
        "samples": total,
        "samples_without_python_frames": no_frames,
        "flink_calls_pct": dict(shares(flink, len(FLINK_CALLS))),
        "flink_calls_total_pct": round(100 * sum(flink.values()) / total, 1),
        "inclusive_pct": shares(inclusive, top),
        "self_pct": shares(own, top),
        "pickling_by_caller_pct": shares(pickling, top),
    }


def _pickling_caller(names: list[str]) -> str | None:
    """Who pickled or unpickled in this stack: the frame that called PyFlink's pickle
    converter, through PyFlink's own frames (a state read's caller, an operator that
    yielded a record, or PyFlink's input conversion when no frame of ours is there)."""
    at = next((i for i, name in enumerate(names) if name.startswith("PickleDataConverter")), None)
    if at is None:
        return None
    way = names[at].split(" (")[0].rsplit(".", 1)[-1]  # to_external: pickle; to_internal
    for name in reversed(names[:at]):
        if not name.endswith(_PYFLINK_FILES):
            return f"{way} <- {name}"
    return f"{way} <- {names[at - 1] if at else '?'}"


# PyFlink's own frames, skipped when looking for the caller of a pickling.
_PYFLINK_FILES = (
    "(state_impl.py)",
    "(converters.py)",
    "(side_output_context.py)",
    "(operation_utils.py)",
)
