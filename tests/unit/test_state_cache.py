"""The keyed operators' read cache (flink_jobs/state_cache.py) over a ValueState that
behaves as PyFlink's does: one value per current key, pickled on every write."""

from __future__ import annotations

import pickle
import random
from typing import Any

from flink_jobs.state_cache import CachedValueState


class PickledValueState:
    """A keyed ValueState of PICKLED_BYTE_ARRAY: values are stored as their pickles and
    every read unpickles a new object, as the JVM's state backend hands them back."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.key = ""
        self.reads = 0
        self.writes = 0

    def value(self) -> Any:
        self.reads += 1
        raw = self.data.get(self.key)
        return None if raw is None else pickle.loads(raw)

    def update(self, value: Any) -> None:
        self.writes += 1
        self.data[self.key] = pickle.dumps(value)

    def clear(self) -> None:
        self.data.pop(self.key, None)


def _at(state: PickledValueState, key: str) -> str:
    state.key = key  # Flink sets the current key before calling the operator
    return key


def test_a_hit_returns_the_written_object_without_reading_the_state():
    backend = PickledValueState()
    cached = CachedValueState(backend, entries=8)
    value = {"events": 1}
    cached.update(_at(backend, "u1"), value)
    assert cached.value(_at(backend, "u1")) is value
    assert backend.reads == 0
    assert backend.writes == 1
    assert pickle.loads(backend.data["u1"]) == {"events": 1}  # written through at once


def test_a_miss_reads_the_state_and_keeps_what_it_read():
    backend = PickledValueState()
    backend.data["u1"] = pickle.dumps({"events": 3})
    cached = CachedValueState(backend, entries=8)
    first = cached.value(_at(backend, "u1"))
    assert first == {"events": 3}
    assert cached.value(_at(backend, "u1")) is first
    assert (backend.reads, cached.hits, cached.misses) == (1, 1, 1)
    assert cached.value(_at(backend, "u2")) is None  # an absent key is not cached
    assert cached.value(_at(backend, "u2")) is None
    assert backend.reads == 3


def test_evict_and_clear_send_the_next_read_to_the_state():
    backend = PickledValueState()
    cached = CachedValueState(backend, entries=8)
    cached.update(_at(backend, "u1"), {"events": 1})
    held = cached.value("u1")
    held["events"] = 99  # changed in place, then not written: the caller evicts
    cached.evict("u1")
    assert cached.value(_at(backend, "u1")) == {"events": 1}
    cached.clear(_at(backend, "u1"))
    assert "u1" not in backend.data
    assert cached.value(_at(backend, "u1")) is None


def test_the_least_recently_used_key_goes_first():
    backend = PickledValueState()
    cached = CachedValueState(backend, entries=2)
    for key in ("a", "b"):
        cached.update(_at(backend, key), {"k": key})
    cached.value(_at(backend, "a"))  # a is now newer than b
    cached.update(_at(backend, "c"), {"k": "c"})
    assert set(cached.cache) == {"a", "c"}
    reads = backend.reads
    assert cached.value(_at(backend, "b")) == {"k": "b"}
    assert backend.reads == reads + 1


def test_no_entries_means_no_cache():
    backend = PickledValueState()
    cached = CachedValueState(backend, entries=0)
    cached.update(_at(backend, "u1"), {"events": 1})
    assert cached.value(_at(backend, "u1")) == {"events": 1}
    assert backend.reads == 1
    assert not cached.cache


def test_under_the_contract_reads_equal_an_uncached_state():
    """Random steps over few keys with a small cache: each step reads a key, changes the
    object in place, then writes it back, clears it, or drops the change (evict). Every
    read equals what a plain state would return, and the state holds the same bytes."""
    rng = random.Random(7)
    backend, plain = PickledValueState(), PickledValueState()
    cached = CachedValueState(backend, entries=3)
    for _ in range(5_000):
        key = _at(backend, _at(plain, f"k{rng.randrange(6)}"))
        got, expected = cached.value(key), plain.value()
        assert got == expected
        obj = got if got is not None else {"n": 0, "log": []}
        obj["n"] += 1
        obj["log"] = (obj["log"] + [rng.random()])[-4:]
        action = rng.random()
        if action < 0.6:
            cached.update(key, obj)
            plain.update(pickle.loads(pickle.dumps(obj)))
        elif action < 0.7:
            cached.clear(key)
            plain.clear()
        else:
            cached.evict(key)
    assert backend.data == plain.data
    assert cached.hits > 0 and cached.misses > 0
