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
