"""Coalesced feature rows: the first change of a quiet key renders at once, the rest of
its interval at the interval's end, from one timer."""

from __future__ import annotations

from flink_jobs.row_schedule import Due, RowSchedule


def test_a_quiet_key_renders_at_once_and_its_interval_waits_for_one_timer() -> None:
    schedule = RowSchedule(200)
    assert schedule.render_now("a", 1_010)
    schedule.rendered("a", 1_010)
    assert not schedule.render_now("a", 1_050)
    assert schedule.defer("a", 1_050, learned=False) == 1_210
    assert schedule.defer("a", 1_100, learned=True) is None  # armed: no call into the JVM
    assert schedule.render_now("b", 1_100)  # keys are apart
    assert schedule.fire("a", 1_210) == Due(learned=True)  # the factors changed meanwhile
    # The timer's rendering starts the next interval.
    assert not schedule.render_now("a", 1_300)
    assert schedule.defer("a", 1_300, learned=False) == 1_410


def test_a_sparse_key_always_renders_at_once() -> None:
    schedule = RowSchedule(100)
    for t in (0, 150, 400, 1_000):
        assert schedule.render_now("a", t)
        schedule.rendered("a", t)
    assert schedule.pending["a"][1] == 0  # never a timer


def test_a_late_timer_still_renders_and_no_second_one_is_armed() -> None:
    schedule = RowSchedule(100)
    schedule.rendered("a", 0)
    assert schedule.defer("a", 50, learned=False) == 100
    # The operator was busy: at 130 the timer of 100 has not fired; the key is not quiet.
    assert not schedule.render_now("a", 130)
    assert schedule.defer("a", 130, learned=True) is None
    assert schedule.fire("a", 100) == Due(learned=True)
    assert schedule.fire("a", 100) is None  # a duplicate firing renders nothing


def test_a_timer_restored_from_a_checkpoint_renders_what_the_state_holds() -> None:
    assert RowSchedule(100).fire("a", 100) == Due(learned=None)


def test_quiet_keys_are_swept() -> None:
    schedule = RowSchedule(10)
    for n in range(60_000):
        schedule.rendered(f"k{n}", n)
    assert len(schedule.pending) < 60_000
