"""The compact dedup memory of the user state (flink_jobs/dedup.py)."""

from __future__ import annotations

import pickle

from flink_jobs import profile
from flink_jobs.dedup import SeenIds, id_hash
from personalization.events import Event
from personalization.settings import FeatureSettings

T0 = 1_700_000_000_000
HOUR = 3_600_000


def test_hash_is_stable_across_processes():
    # A fixed value: Python's own hash() changes per process, this must not (a
    # checkpoint restored in another process recognises the ids of the run before).
    assert id_hash("event-1") == id_hash("event-1")
    assert id_hash("event-1") != id_hash("event-2")
    assert id_hash("event-1") == 2123818840965202205


def test_membership_and_count_bound():
    seen = SeenIds()
    for n in range(10):
        seen.add(f"e{n}", T0 + n, horizon_ms=0, max_ids=4)
    assert len(seen) == 4
    assert [f"e{n}" in seen for n in range(10)] == [False] * 6 + [True] * 4


def test_ids_past_the_horizon_leave_from_the_front_only():
    seen = SeenIds()
    seen.add("old", T0, horizon_ms=0, max_ids=10)
    seen.add("new", T0 + 5 * HOUR, horizon_ms=0, max_ids=10)
    seen.add("late", T0 + HOUR, horizon_ms=0, max_ids=10)  # out of order, behind "new"
    seen.add("now", T0 + 30 * HOUR, horizon_ms=T0 + 2 * HOUR, max_ids=10)
    assert "old" not in seen
    # "late" is past the horizon but behind a newer id: kept (never forgotten early).
    assert all(i in seen for i in ("new", "late", "now")) and len(seen) == 3


def test_pickles_as_bytes_and_round_trips():
    seen = SeenIds()
    for n in range(256):
        seen.add(f"ml-196-{n}-881250949-rating-{n}", T0 + n, horizon_ms=0, max_ids=256)
    blob = pickle.dumps(seen)
    assert len(blob) < 256 * 16 + 200  # two int64 per id, not the id strings
    again = pickle.loads(blob)
    assert again == seen and "ml-196-7-881250949-rating-7" in again


def test_state_written_with_an_id_dict_still_dedups():
    """Keyed state from checkpoints before SeenIds holds ``{event_id: time}``."""
    cfg = FeatureSettings()
    state = profile.new_state("u1")
    state.seen_ids = {"a": T0, "b": T0 + 1}  # type: ignore[assignment]
    event = Event(event_id="b", user_id="u1", event_type="page_view", event_time_ms=T0 + 2)
    assert profile.apply_event(state, event, cfg).duplicate
    fresh = Event(event_id="c", user_id="u1", event_type="page_view", event_time_ms=T0 + 3)
    assert not profile.apply_event(state, fresh, cfg).duplicate
    assert isinstance(state.seen_ids, SeenIds) and len(state.seen_ids) == 3
