"""Threads named for the kernel (personalization/thread_names.py)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personalization.thread_names import NamedThread, name_current_thread

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl: Linux only")


def _kernel_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@LINUX_ONLY
def test_a_named_thread_shows_its_name_in_proc() -> None:
    seen: list[str] = []

    def comm() -> None:
        seen.append(_kernel_name())

    thread = NamedThread(target=comm, name="catalog-refresh-and-more")
    thread.start()
    thread.join()
    # The kernel keeps 15 bytes of it.
    assert seen == ["catalog-refresh"]


@LINUX_ONLY
def test_a_pool_started_from_a_named_thread_names_its_workers_itself() -> None:
    seen: list[str] = []

    def start_pool() -> None:
        with ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="grpc", initializer=name_current_thread
        ) as pool:
            seen.append(pool.submit(_kernel_name).result())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain") as pool:
            seen.append(pool.submit(_kernel_name).result())  # inherits, as the kernel does

    thread = NamedThread(target=start_pool, name="grpc-loop")
    thread.start()
    thread.join()
    assert seen == ["grpc_0", "grpc-loop"]
