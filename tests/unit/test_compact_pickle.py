"""compact_pickle: same values back, readable across the change, refuses other classes."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from flink_jobs.operators import CoVisitEdge, ItemEvent
from personalization.compact_pickle import compact_pickle
from personalization.events import Event


def _event() -> Event:
    return Event(
        event_id="e-1",
        user_id="u-1",
        event_type="product_view",
        event_time_ms=1_700_000_000_000,
        item_id="i-1",
    )


def test_records_round_trip_through_pickle():
    event = _event()
    item_event = ItemEvent(event, (("i-2", 1.0, 5),))
    edge = CoVisitEdge("i-1", "i-2", 0.5, 7)
    for record in (event, item_event, edge):
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            assert pickle.loads(pickle.dumps(record, protocol)) == record


def test_bytes_pickled_by_the_dataclasses_methods_still_load():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int
        b: tuple[str, ...]

    state = Plain(1, ("x",)).__getstate__()  # what dataclasses wrote before the change
    Compact = compact_pickle(dataclasses.dataclass(frozen=True, slots=True)(_fields_ab()))
    restored = object.__new__(Compact)
    restored.__setstate__(state)
    assert (restored.a, restored.b) == (1, ("x",))
    assert Compact(1, ("x",)).__getstate__() == state


def _fields_ab() -> type:
    class Compact:
        a: int
        b: tuple[str, ...]

    return Compact


def test_single_field_class_and_refusals():
    @compact_pickle
    @dataclasses.dataclass(frozen=True, slots=True)
    class One:
        value: str

    state = One("v").__getstate__()
    assert state == ["v"]
    restored = object.__new__(One)
    restored.__setstate__(state)
    assert restored == One("v")

    @dataclasses.dataclass
    class NoSlots:
        a: int = 0

    with pytest.raises(TypeError):
        compact_pickle(NoSlots)


def test_state_pickled_before_a_mutable_class_was_decorated_still_loads():
    # Regression: dataclasses gives only *frozen* slots classes a __getstate__; a mutable
    # one (UserState, ItemState, Sessions...) pickles as (None, {slot: value}). Keyed
    # state in checkpoints written before the state classes were decorated has that form.
    @dataclasses.dataclass(slots=True)
    class Plain:
        a: int
        b: list[str]

    old = Plain(1, ["x"]).__reduce_ex__(2)[2]
    assert isinstance(old, tuple)  # the default form, not a list
    Compact = compact_pickle(dataclasses.dataclass(slots=True)(_fields_ab()))
    restored = object.__new__(Compact)
    restored.__setstate__(old)
    assert (restored.a, restored.b) == (1, ["x"])
    again = object.__new__(Compact)
    again.__setstate__(Compact(2, ["y"]).__getstate__())
    assert (again.a, again.b) == (2, ["y"])


def test_fields_appended_later_load_from_older_states_with_their_defaults():
    @compact_pickle
    @dataclasses.dataclass(slots=True)
    class Version1:
        key: str
        count: int = 0

    @compact_pickle
    @dataclasses.dataclass(slots=True)
    class Version2:
        key: str
        count: int = 0
        factors: bytes = b""
        seen: dict[str, int] = dataclasses.field(default_factory=dict)

    # What unpickling does with the state an older job version wrote.
    for old_state in (Version1("k", 3).__getstate__(), (None, {"key": "k", "count": 3})):
        loaded = Version2.__new__(Version2)
        loaded.__setstate__(old_state)
        assert (loaded.key, loaded.count, loaded.factors, loaded.seen) == ("k", 3, b"", {})
        loaded.seen["x"] = 1
        assert Version2("j").seen == {}  # each load gets its own default
    with pytest.raises(ValueError, match="4 values for 2 fields"):
        Version1.__new__(Version1).__setstate__(["k", 3, b"", {}])
