"""settle_heap: what is alive is frozen out of the collector; young collections spaced."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from personalization.heap import YOUNG_COLLECTION_EVERY, settle_heap


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_settle_heap_freezes_what_is_alive_and_spaces_young_collections() -> None:
    gc.unfreeze()
    alive = [{"row": i} for i in range(1_000)]
    middle, old = gc.get_threshold()[1:]
    settle_heap()
    assert gc.get_freeze_count() >= len(alive)
    assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, middle, old)
    # What is allocated afterwards is collected as before: a cycle still goes.
    before = gc.get_count()[0]
    cycle: list[object] = []
    cycle.append(cycle)
    assert gc.get_count()[0] > before
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("collector_restored")
def test_settle_heap_without_spacing_keeps_the_threshold() -> None:
    threshold = gc.get_threshold()
    settle_heap(young_collection_every=None)
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() > 0


def test_observe_collections_times_each_collection_by_generation() -> None:
    from prometheus_client import REGISTRY

    from personalization.heap import observe_collections

    assert observe_collections() is observe_collections()  # once per process

    def count(generation: str) -> float:
        value = REGISTRY.get_sample_value(
            "pz_python_gc_pause_seconds_count", {"generation": generation}
        )
        return value or 0.0

    before_full, before_young = count("2"), count("0")
    gc.collect(2)
    gc.collect(0)
    assert count("2") == before_full + 1
    assert count("0") >= before_young + 1
    total = REGISTRY.get_sample_value("pz_python_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0
