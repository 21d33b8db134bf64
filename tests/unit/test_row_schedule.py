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
