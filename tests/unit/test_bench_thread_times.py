"""bench/ingest/sampling.py: per-thread CPU and run-queue wait of the job's JVM."""

from __future__ import annotations

import os
import threading
import time

from bench.ingest.sampling import _thread_ticks, thread_cpu


def test_cpu_and_runqueue_wait_per_thread_over_the_interval() -> None:
    tck = os.sysconf("SC_CLK_TCK")
    before = {1: ("user features +", 0, 0), 2: ("item popularity", 10, 5_000_000_000)}
    after = {
        1: ("user features +", 5 * tck, 4_000_000_000),  # 5 s on CPU, 4 s waiting, in 10 s
        2: ("item popularity", 10 + 3 * tck, 9_000_000_000),
        3: ("new thread", 2 * tck, -1),  # started inside the interval; no schedstat here
        4: ("idle", 0, 0),
    }
    rows = thread_cpu(before, after, 10.0)
    assert [r["thread"] for r in rows] == ["user features +", "item popularity", "new thread"]
    assert rows[0]["cpu_pct"] == 50.0 and rows[0]["runqueue_wait_pct"] == 40.0
    assert rows[1]["cpu_pct"] == 30.0 and rows[1]["runqueue_wait_pct"] == 40.0
    assert rows[2]["cpu_pct"] == 20.0 and "runqueue_wait_pct" not in rows[2]


def test_this_session_threads_are_read_with_their_waits() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin, name="spinner")
    worker.start()
    try:
        a = _thread_ticks(os.getsid(0))
        time.sleep(0.3)
        b = _thread_ticks(os.getsid(0))
    finally:
        stop.set()
        worker.join()
    assert worker.native_id in a and worker.native_id in b
    name, ticks, wait_ns = b[worker.native_id]
    assert name  # the kernel's thread name (Python 3.11 leaves it the process's)
    assert ticks >= a[worker.native_id][1]
    assert wait_ns == -1 or wait_ns >= a[worker.native_id][2] >= 0
