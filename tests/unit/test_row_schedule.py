"""The item operator's coalesced rows: one timer per key per interval."""

from __future__ import annotations

from flink_jobs.row_schedule import Due, RowSchedule


def test_changes_within_an_interval_arm_one_timer_at_its_end() -> None:
    schedule = RowSchedule(200)
    assert schedule.defer("a", 1_010, learned=False) == 1_200
    assert schedule.defer("a", 1_150, learned=True) is None  # armed: no call into the JVM
    assert schedule.defer("b", 1_199, learned=False) == 1_200  # keys are apart
    assert schedule.fire("a", 1_200) == Due(learned=True)  # the factors changed meanwhile
    assert schedule.fire("b", 1_200) == Due(learned=False)
    assert schedule.pending == {}
    # The next change starts the next interval.
    assert schedule.defer("a", 1_200, learned=False) == 1_400


def test_a_late_timer_leaves_the_row_to_the_newer_one() -> None:
    schedule = RowSchedule(100)
    assert schedule.defer("a", 50, learned=True) == 100
    # The operator was busy: at 130 the timer of 100 has not fired yet.
    assert schedule.defer("a", 130, learned=False) == 200
    assert schedule.fire("a", 100) is None  # the timer of 200 renders it
    assert schedule.fire("a", 200) == Due(learned=True)  # the earlier learning is kept


def test_a_timer_restored_from_a_checkpoint_renders_what_the_state_holds() -> None:
    assert RowSchedule(100).fire("a", 100) == Due(learned=None)


def test_a_key_quiet_for_an_interval_renders_at_once_without_a_timer() -> None:
    schedule = RowSchedule(100)
    # Leading edge: no row of "a" in the last 100 ms: render now, no call into the JVM.
    assert schedule.change("a", 1_010, learned=False) == (True, None)
    # More changes within the interval wait for one timer at its end.
    assert schedule.change("a", 1_030, learned=True) == (False, 1_100)
    assert schedule.change("a", 1_060, learned=False) == (False, None)  # armed already
    assert schedule.change("b", 1_061, learned=True) == (True, None)  # keys are apart
    assert schedule.fire("a", 1_100) == Due(learned=True)
    # "a" rendered at 1,100: a change before 1,200 waits again; after it, goes at once.
    assert schedule.change("a", 1_150, learned=False) == (False, 1_200)
    assert schedule.fire("a", 1_200) == Due(learned=False)
    assert schedule.change("a", 1_301, learned=False) == (True, None)


def test_change_forgets_keys_rendered_more_than_an_interval_ago() -> None:
    schedule = RowSchedule(100)
    for n in range(1_000):
        assert schedule.change(f"k{n}", 10_000 + n, learned=False) == (True, None)
    assert len(schedule.rendered) <= 101  # only the last interval's keys are kept
    assert schedule.change("k999", 11_050, learned=False) == (False, 11_100)
    assert schedule.change("k0", 11_050, learned=False) == (True, None)
