"""The user state's flat pickle (flink_jobs/profile.py): same state back, states pickled
as objects (older checkpoints) still load, forms it does not cover fall back."""

from __future__ import annotations

import pickle

import pytest

from flink_jobs import covisitation, profile
from flink_jobs.impressions import Impression
from personalization.events import ADD_TO_CART, PRODUCT_VIEW, PURCHASE, Event
from personalization.settings import FeatureSettings

T0 = 1_700_000_000_000


def _rich_state() -> profile.UserState:
    """A user with two sessions, a cart, a purchase, impressions, seen ids, history."""
    cfg = FeatureSettings()
    state = profile.new_state("u-1")
    kinds = [PRODUCT_VIEW, PRODUCT_VIEW, ADD_TO_CART, PURCHASE, PRODUCT_VIEW]
    for n, kind in enumerate(kinds):
        # The last event two hours later: a second session.
        t = T0 + n * 30_000 + (7_200_000 if n == len(kinds) - 1 else 0)
        event = Event(
            f"e-{n}", "u-1", kind, t, item_id=f"i-{n % 3}", category=f"c-{n % 2}", price=9.5
        )
        assert profile.apply_event(state, event, cfg).changed
        covisitation.push_history(state.covisit, event.item_id, t, covisitation.CoVisitConfig())
    shown = Impression("rec-1", "u-1", ("i-7", "i-8"), ("c-1", ""), T0 + 10_000)
    assert profile.apply_impression(state, shown, cfg).changed
    state.cf_factors = b"\x00\x00\x80?" * 4
    state.rule_state = {"rule": ["fp", T0, 2]}
    state.cluster = (3, 0.25, 5)
    return state


def test_a_rich_state_round_trips_at_every_protocol():
    state = _rich_state()
    assert state.sessions.count == 2 and len(state.seen_ids) == 6 and state.impressions
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(state, protocol))
        assert restored == state
        assert restored.sessions.current == state.sessions.current
        assert restored.seen_ids == state.seen_ids
        assert "e-3" in restored.seen_ids and "e-9" not in restored.seen_ids


def test_a_restored_state_shares_nothing_with_the_original():
    state = _rich_state()
    restored = pickle.loads(pickle.dumps(state))
    restored.sessions.kept[0].events += 1
    restored.interests["c-9"] = 1.0
    restored.impressions.items.clear()
    assert restored != state
    assert "c-9" not in state.interests and state.impressions.items


def test_states_pickled_as_objects_still_load(monkeypatch: pytest.MonkeyPatch):
    state = _rich_state()
    with monkeypatch.context() as patch:
        # The form before the flat layout: Python's own reduce, nested objects and all.
        patch.setattr(profile.UserState, "__reduce__", object.__reduce__)
        as_objects = pickle.dumps(state)
    flat = pickle.dumps(state)
    assert b"load_user_state" not in as_objects and b"load_user_state" in flat
    assert len(flat) < len(as_objects)
    assert pickle.loads(as_objects) == state == pickle.loads(flat)


def test_seen_ids_of_an_old_checkpoint_fall_back_to_the_object_form():
    state = _rich_state()
    state.seen_ids = {"e-1": T0}  # type: ignore[assignment]  # the {id: time} form
    data = pickle.dumps(state)
    assert b"load_user_state" not in data
    assert pickle.loads(data).seen_ids == {"e-1": T0}


def test_a_shorter_layout_loads_with_the_defaults_of_later_fields():
    state = _rich_state()
    state.weekend_events = 4
    _, (layout, values) = profile._reduce_user_state(state)
    restored = profile.load_user_state(layout, values[:-1])  # written before the last field
    assert restored.weekend_events == 0
    assert restored.sessions == state.sessions and restored.cart == state.cart


def test_an_unknown_layout_is_refused():
    _, (_, values) = profile._reduce_user_state(_rich_state())
    with pytest.raises(ValueError, match="layout"):
        profile.load_user_state(profile.FLAT_LAYOUT + 1, values)
