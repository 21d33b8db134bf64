"""Threads named for the kernel (personalization/thread_names.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from personalization.thread_names import NamedThread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names: Linux only")
def test_a_named_thread_shows_its_name_in_proc() -> None:
    seen: list[str] = []

    def comm() -> None:
        import threading

        native = threading.get_native_id()
        seen.append(Path(f"/proc/self/task/{native}/comm").read_text().strip())

    thread = NamedThread(target=comm, name="catalog-refresh-and-more")
    thread.start()
    thread.join()
    # The kernel keeps 15 bytes of it.
    assert seen == ["catalog-refresh"]
