"""The cyclic garbage collector in long-running processes that allocate per record.

CPython's collector runs a young collection every 700 net container allocations and,
every hundred of those, a full one that walks every tracked object: in a process that has
imported Feast, pandas and pyarrow that is hundreds of thousands of objects which live as
long as the process. Decoding feature rows allocates a dict and lists per row, so the
online-store writer paid for those walks per row: ``orjson.loads`` of the job's rows took
8-11 µs a row with Feast's modules loaded against 3-5 µs once they were frozen
(``gc.freeze``) and young collections came every 10,000 allocations instead of 700
(the rows of 10,000 generator-traffic events, in batches of 2,000 as the writer consumes).

The records these processes handle are acyclic (dicts, lists, strings): reference
counting frees them; the collector is only for the rare cycle, and still runs.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from prometheus_client import Histogram

__all__ = ["YOUNG_COLLECTION_EVERY", "observe_collections", "settle_heap"]

# Net container allocations between young collections (CPython's default: 700).
YOUNG_COLLECTION_EVERY = 10_000


def settle_heap(young_collection_every: int | None = YOUNG_COLLECTION_EVERY) -> None:
    """Call once set up: collect, then move everything alive (modules, clients, config)
    out of the collector's generations for good (``gc.freeze``), so that later
    collections walk only what was allocated since. With ``young_collection_every``,
    young collections come that many net allocations apart (older generations keep their
    default ratios)."""
    gc.collect()
    gc.freeze()
    if young_collection_every is not None:
        _young, middle, old = gc.get_threshold()
        gc.set_threshold(young_collection_every, middle, old)


# A full collection over a large heap takes whole seconds' fractions: 0.4-0.7 s measured
# in process over the job's steps with PyFlink's modules and 300,000 live objects.
_PAUSE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_watch_lock = threading.Lock()
_watching: Histogram | None = None


def observe_collections() -> Histogram:
    """Time every collection of this process's cyclic GC into
    ``pz_python_gc_pause_seconds{generation}`` (the default registry, so every metrics
    endpoint of ours serves it). A collection holds the GIL throughout: in thread mode
    all of a TaskManager's Python operators wait for it, and a full one over a large heap
    is a stall that reaches every record in flight. Installed once per process."""
    global _watching
    with _watch_lock:
        if _watching is not None:
            return _watching
        pauses = Histogram(
            "pz_python_gc_pause_seconds",
            "Duration of the Python cyclic garbage collector's collections, by generation",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
        )
        by_generation = [pauses.labels(str(g)) for g in range(3)]
        started = [0.0]

        def on_collection(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                by_generation[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_collection)
        _watching = pauses
        return pauses
