"""The job's JVM as it runs: async-profiler's CPU samples of every thread.

py-spy (:mod:`bench.ingest.job_profile`) sees the Python frames of the operator threads
and nothing else: not the JVM's own threads (the JIT compilers, the garbage collector,
the Kafka clients, the checkpoint writers), and not the Java and native frames around
each call into Python (pemja's conversions, the exception that ends every call).
``py-spy --native`` cannot unwind the JVM's frames. async-profiler can: loaded into the
running JVM with ``jcmd <pid> JVMTI.agent_load``, it samples every thread's CPU time with
its Java, native and kernel frames, and writes collapsed stacks per thread.

The agent is ``tools.profiler:async-profiler`` from Maven Central (its linux-x64 jar
carries the library), fetched with Maven into the jars dir on first use. It is loaded
only into the bench's own job, for the seconds asked, then stopped; the job runs on.
``event=cpu`` needs perf events (``kernel.perf_event_paranoid`` <= 2 for a process's own
threads); where they are refused the agent samples with ``itimer`` instead.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from ops.infra.jars import java_home, run_maven

__all__ = ["AGENT_ARTIFACT", "AsyncProfiler", "agent_library", "kind_of", "summarize"]

AGENT_ARTIFACT = "tools.profiler:async-profiler:3.0:jar:linux-x64"
_LIBRARY_IN_JAR = "linux-x64/libasyncProfiler.so"
# One sample per this much CPU time of a thread.
INTERVAL = "2ms"

# What a sample was spent on, first match wins: by the thread's name (Flink names a
# task's thread after its chain of operators), else by a frame on its stack.
KINDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (kind, thread name contains any of, stack contains a frame with any of)
    ("JIT compilers", ("CompilerThre",), ()),
    ("garbage collector", ("GC Thread", "G1 ", "GC_active"), ()),
    # pemja ends every call into Python by throwing NoSuchElementException from
    # PyIterator.next, with its stack trace filled in.
    ("pemja: end-of-call exception", (), ("java/util/NoSuchElementException.<init>",)),
    # Our operators' code, PyFlink's conversions, and the calls back into Flink they
    # make (state, timers, side outputs: their Java frames are under the Python ones).
    (
        "inside Python operator calls",
        (),
        ("pemja/core/object/PyIterator", "pemja/core/PythonInterpreter.invoke"),
    ),
    ("Kafka sinks (produce, compress, send)", ("kafka-producer-network-thread",), ("KafkaWriter",)),
    (
        "Kafka sources (fetch, deserialize)",
        ("Source Data Fetcher",),
        ("KafkaRecordEmitter", "SourceReaderBase"),
    ),
    (
        "checkpoints",
        ("AsyncOperations", "Channel state writer", "Checkpoint"),
        ("Checkpoint",),
    ),
    (
        "network exchanges (serialize, buffers, flush)",
        ("OutputFlusher",),
        ("RecordWriter.emit", "StreamTaskNetworkInput", "RecordWriterOutput"),
    ),
)
OTHER = "other JVM work"


def agent_library(jars_dir: Path) -> Path:
    """The agent's shared library, fetched with Maven and unpacked on first use."""
    target = jars_dir / "async-profiler" / "libasyncProfiler.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        run_maven(["dependency:copy", f"-Dartifact={AGENT_ARTIFACT}", f"-DoutputDirectory={tmp}"])
        jars = list(Path(tmp).glob("*.jar"))
        if not jars:
            raise RuntimeError(f"fetching {AGENT_ARTIFACT}: maven copied no jar")
        with zipfile.ZipFile(jars[0]) as jar:
            unpacked = Path(tmp) / "lib.so"
            unpacked.write_bytes(jar.read(_LIBRARY_IN_JAR))
        unpacked.replace(target)
    return target


class AsyncProfiler:
    """One recording of the JVM ``pid`` into ``out`` (collapsed stacks, thread first)."""

    def __init__(self, pid: int, library: Path, out: Path) -> None:
        self.pid = pid
        self.library = library
        self.out = out
        self.event = ""

    def _agent(self, command: str) -> tuple[bool, str]:
        jcmd = str(java_home() / "bin" / "jcmd")
        # jcmd splits its arguments at '=', so the agent's options go quoted as one.
        done = subprocess.run(
            [jcmd, str(self.pid), "JVMTI.agent_load", str(self.library), f'"{command}"'],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = (done.stdout + done.stderr).strip()
        return done.returncode == 0 and "return code: 0" in text, text

    def start(self) -> None:
        """Start sampling: CPU time through perf events, else a CPU-time interval timer."""
        failures = []
        for event in ("cpu", "itimer"):
            ok, text = self._agent(f"start,event={event},interval={INTERVAL},threads")
            if ok:
                self.event = event
                return
            failures.append(f"{event}: {text[-300:]}")
        raise RuntimeError("async-profiler did not start: " + " | ".join(failures))

    def stop(self) -> Path:
        ok, text = self._agent(f"stop,file={self.out},collapsed")
        if not ok or not self.out.is_file():
            raise RuntimeError(f"async-profiler did not stop cleanly: {text[-300:]}")
        return self.out


_DIGITS = re.compile(r"\d+")
_TID = re.compile(r"\s*tid=\d+")


def thread_name(first_frame: str) -> str:
    """``[kafka-producer-network-thread | producer-3 tid=123]`` ->
    ``kafka-producer-network-thread | producer-#``: one row per kind of thread."""
    name = _TID.sub("", first_frame.strip("[]"))
    return _DIGITS.sub("#", name).strip()


def kind_of(thread: str, frames: list[str]) -> str:
    """The :data:`KINDS` entry a sample falls under (:data:`OTHER` when none)."""
    for kind, thread_keys, frame_keys in KINDS:
        if any(key in thread for key in thread_keys):
            return kind
        if frame_keys and any(key in frame for frame in frames for key in frame_keys):
            return kind
    return OTHER


def summarize(collapsed: Path, top: int = 20) -> dict[str, Any]:
    """Shares of the samples: per thread, per kind (:data:`KINDS`) and per leaf frame
    (the function on CPU)."""
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        thread = thread_name(frames[0]) if frames[0].startswith("[") else "?"
        total += n
        threads[thread] += n
        kinds[kind_of(thread, frames[1:])] += n
        leaves[frames[-1]] += n
    if total == 0:
        return {"samples": 0}

    def shares(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in counter.most_common(k)]

    return {
        "samples": total,
        "threads_pct": shares(threads, top),
        "kinds_pct": shares(kinds, len(KINDS) + 1),
        "leaf_frames_pct": shares(leaves, top),
    }
