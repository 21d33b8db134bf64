"""Our threads' names as the kernel sees them (``top -H``, ``/proc/<pid>/task/*/comm``,
the benches' per-thread tables): Python 3.11 names a thread only for Python, so every
thread of a server shows as ``python`` and its event loop cannot be told from its
catalog refresh without a profiler."""

from __future__ import annotations

import ctypes
import sys
import threading

__all__ = ["NamedThread", "name_current_thread", "set_native_name"]

_PR_SET_NAME = 15
_MAX_NAME_BYTES = 15  # the kernel keeps 16 bytes with the terminating NUL


def set_native_name(name: str) -> None:
    """Name the calling thread for the kernel (Linux; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode("utf-8", "replace")[:_MAX_NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the name stays Python's only
        return


def name_current_thread() -> None:
    """Give the calling thread's Python name to the kernel. A ``ThreadPoolExecutor``'s
    ``initializer``: the kernel names a new thread after the one that started it, so
    the workers a pool starts from a named thread would all carry that thread's name."""
    set_native_name(threading.current_thread().name)


class NamedThread(threading.Thread):
    """A ``threading.Thread`` that gives the kernel its name as it starts."""

    def run(self) -> None:
        set_native_name(self.name)
        super().run()
