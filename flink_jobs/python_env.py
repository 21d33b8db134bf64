"""The Python environment of the interpreter that Flink's thread mode embeds in a JVM."""

from __future__ import annotations

import os
import site

from personalization.settings import PROJECT_ROOT

__all__ = ["embedded_python_path"]


def embedded_python_path() -> str:
    """PYTHONPATH for the Python interpreter that thread mode embeds in a JVM.

    PEMJA initializes that interpreter from the base installation and ignores a
    virtualenv's site-packages (FLINK-38585), so the venv's site-packages and the
    project root are handed over explicitly, ahead of anything already set.
    """
    paths = [*site.getsitepackages(), str(PROJECT_ROOT)]
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([*paths, *([existing] if existing else [])])
