"""The rules that live once in the core: view names, the version rule, decay."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from feature_repo import names
from feature_repo.features import FEATURE_VIEWS, item, user
from personalization.decay import decay_factor, decayed
from personalization.feature_updates import next_version_us


def test_view_names_are_the_feast_definitions() -> None:
    assert set(FEATURE_VIEWS) == set(names.ENTITY_OF_VIEW)
    join_key = {user.name: user.join_key, item.name: item.join_key}
    for view, entity in names.ENTITY_OF_VIEW.items():
        assert [join_key[e] for e in FEATURE_VIEWS[view].entities] == [entity]
    assert set(names.USER_VIEWS) == {names.USER_PROFILE, names.USER_CF}


@given(st.integers(0, 2**41), st.integers(0, 2**51))
def test_versions_grow_strictly(time_ms: int, previous_us: int) -> None:
    version = next_version_us(time_ms, previous_us)
    assert version > previous_us
    assert version >= time_ms * 1000


@given(st.integers(0, 2**41), st.integers(0, 2**51))
def test_the_microsecond_digits_count_updates(time_ms: int, previous_us: int) -> None:
    assert next_version_us(time_ms, previous_us) % 1000 == (previous_us + 1) % 1000


def test_version_is_the_event_time_when_it_is_newer() -> None:
    # Plus the update count in the microseconds (6 = 5 + 1).
    assert next_version_us(1_700_000_000_000, 5) == 1_700_000_000_000_006


def test_after_a_restore_the_run_that_folded_more_events_is_newer() -> None:
    checkpoint = next_version_us(1_000, 0)  # the state the restore starts from
    purchase_t, view_t = 2_000, 1_990
    dead_run = next_version_us(purchase_t, checkpoint)  # flushed, then the run died
    view = next_version_us(view_t, checkpoint)  # the replay meets the view first
    replay = next_version_us(purchase_t, view)
    assert replay > dead_run  # Feast keeps the row with both events


def test_half_life_halves() -> None:
    assert decay_factor(3_600_000, 3600.0) == 0.5
    assert decay_factor(0, 3600.0) == 1.0
    assert decay_factor(-3_600_000, 3600.0) == 2.0  # a late weight, seen from the past
    assert decay_factor(10**12, math.inf) == 1.0
    assert decayed(8.0, 0, 7_200_000, 3600.0) == 2.0


def test_a_changelog_record_carries_one_or_several_rows() -> None:
    from personalization.feature_updates import FeatureUpdate, decode_record, encode_record

    a = FeatureUpdate("user_cf", "u\n1", 5, {"cf_vector": [0.5, -1.0]})
    b = FeatureUpdate("item_cf", "i-1", 5, {"cf_vector": [1.0, 2.0]})
    assert decode_record(encode_record([a, b])) == [a, b]
    assert decode_record(encode_record([a, b]).encode()) == [a, b]
    assert decode_record(a.to_json()) == [a]  # single-row records, as before
