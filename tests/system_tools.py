"""Debian tools some tests drive (promtool, prometheus, docker-compose).

``scripts/bootstrap.sh --tests`` (which ``./dev.sh test`` and CI run) installs them; a
developer who skipped it gets a skip, CI gets a failure: CI must run these tests.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """Path of ``name`` on PATH; fails under CI, skips elsewhere, when it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} missing: scripts/bootstrap.sh --tests installs Debian's {package}"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run this test, not skip it
    pytest.skip(message)
