"""The item operator's coalesced rows: one timer per key per interval."""

from __future__ import annotations

import zlib
from collections import Counter

from flink_jobs.row_schedule import Due, RowSchedule


def key_with_phase(every_ms: int, phase: int, start: int = 0) -> str:
    """A key whose intervals start at multiples of ``every_ms`` plus ``phase``."""
    n = start
    while zlib.crc32(f"k{n}".encode()) % every_ms != phase:
        n += 1
    return f"k{n}"


def test_changes_within_an_interval_arm_one_timer_at_its_end() -> None:
    schedule = RowSchedule(200)
    a, b = key_with_phase(200, 0), key_with_phase(200, 0, start=10_000)
    assert schedule.defer(a, 1_010, learned=False) == 1_200
    assert schedule.defer(a, 1_150, learned=True) is None  # armed: no call into the JVM
    assert schedule.defer(b, 1_199, learned=False) == 1_200  # keys are apart
    assert schedule.fire(a, 1_200) == Due(learned=True)  # the factors changed meanwhile
    assert schedule.fire(b, 1_200) == Due(learned=False)
    assert schedule.pending == {}
    # The next change starts the next interval.
    assert schedule.defer(a, 1_200, learned=False) == 1_400


def test_a_late_timer_leaves_the_row_to_the_newer_one() -> None:
    schedule = RowSchedule(100)
    a = key_with_phase(100, 0)
    assert schedule.defer(a, 50, learned=True) == 100
    # The operator was busy: at 130 the timer of 100 has not fired yet.
    assert schedule.defer(a, 130, learned=False) == 200
    assert schedule.fire(a, 100) is None  # the timer of 200 renders it
    assert schedule.fire(a, 200) == Due(learned=True)  # the earlier learning is kept


def test_a_timer_restored_from_a_checkpoint_renders_what_the_state_holds() -> None:
    assert RowSchedule(100).fire("a", 100) == Due(learned=None)


def test_a_key_quiet_for_an_interval_renders_at_once_without_a_timer() -> None:
    schedule = RowSchedule(100)
    a, b = key_with_phase(100, 0), key_with_phase(100, 0, start=10_000)
    # Leading edge: no row of "a" in the last 100 ms: render now, no call into the JVM.
    assert schedule.change(a, 1_010, learned=False) == (True, None)
    # More changes within the interval wait for one timer at its end.
    assert schedule.change(a, 1_030, learned=True) == (False, 1_100)
    assert schedule.change(a, 1_060, learned=False) == (False, None)  # armed already
    assert schedule.change(b, 1_061, learned=True) == (True, None)  # keys are apart
    assert schedule.fire(a, 1_100) == Due(learned=True)
    # "a" rendered at 1,100: a change before 1,200 waits again; after it, goes at once.
    assert schedule.change(a, 1_150, learned=False) == (False, 1_200)
    assert schedule.fire(a, 1_200) == Due(learned=False)
    assert schedule.change(a, 1_301, learned=False) == (True, None)


def test_change_forgets_keys_rendered_more_than_an_interval_ago() -> None:
    schedule = RowSchedule(100)
    k999 = key_with_phase(100, 0)
    keys = [f"x{n}" for n in range(999)] + [k999]
    for n, key in enumerate(keys):
        assert schedule.change(key, 10_000 + n, learned=False) == (True, None)
    assert len(schedule.rendered) <= 101  # only the last interval's keys are kept
    assert schedule.change(k999, 11_050, learned=False) == (False, 11_100)
    assert schedule.change("x0", 11_050, learned=False) == (True, None)


def test_each_key_has_its_own_phase_and_no_change_waits_longer_than_an_interval() -> None:
    schedule = RowSchedule(1_000)
    early, late = key_with_phase(1_000, 100), key_with_phase(1_000, 900)
    assert schedule.defer(early, 5_050, learned=False) == 5_100
    assert schedule.defer(late, 5_050, learned=False) == 5_900
    assert schedule.defer(early, 5_100, learned=False) == 6_100  # on the boundary: the next
    for n in range(2_000):
        now = 7_000 + n
        due = RowSchedule(1_000).defer(f"y{n}", now, learned=False)
        assert due is not None and now < due <= now + 1_000


def test_the_timers_of_many_keys_spread_over_the_interval() -> None:
    """Changes of 5,000 keys within one interval: their timers must not all fire at one
    instant (one interpreter renders them all; a burst stalls every operator)."""
    schedule = RowSchedule(1_000)
    dues = Counter(schedule.defer(f"item-{n}", 20_000, learned=False) for n in range(5_000))
    assert len(dues) > 900  # ~1,000 distinct instants over the second
    assert max(dues.values()) < 30  # ~5 per instant, no burst
