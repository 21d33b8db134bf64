"""The pacer that makes the catalog refresh give the GIL back (serving/pacing.py)."""

from __future__ import annotations

import pytest

from serving.pacing import Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rests_once_per_work_interval_and_not_before():
    t = FakeTime()
    pace = Pacer(0.002, 0.001, clock=t.clock, sleep=t.sleep)
    for _ in range(6):  # 1.8 ms of work: no rest yet
        t.now += 0.0003
        pace()
    assert t.slept == []
    t.now += 0.0003  # 2.1 ms
    pace()
    assert t.slept == [0.001]
    assert pace.rests == 1
    # The rest does not count as work: the next rest comes 2 ms of work later.
    for _ in range(6):
        t.now += 0.0003
        pace()
    assert pace.rests == 1
    t.now += 0.0003
    pace()
    assert pace.rests == 2 and t.slept == [0.001, 0.001]


def test_restart_forgets_the_time_before_a_burst():
    t = FakeTime()
    pace = Pacer(0.002, 0.001, clock=t.clock, sleep=t.sleep)
    t.now += 10.0  # the thread waited for its next refresh
    pace.restart()
    t.now += 0.0005
    pace()
    assert t.slept == []


def test_no_rest_configured_never_sleeps_and_bad_values_are_refused():
    t = FakeTime()
    pace = Pacer(0.002, 0.0, clock=t.clock, sleep=t.sleep)
    t.now += 1.0
    pace()
    assert t.slept == []
    with pytest.raises(ValueError):
        Pacer(0.0, 0.001)
    with pytest.raises(ValueError):
        Pacer(0.002, -1.0)


def test_a_paced_snapshot_equals_an_unpaced_one():
    import numpy as np

    from serving.catalog_snapshot import ItemRow, build_snapshot

    rows = [
        ItemRow(f"i{n}", f"c{n % 7}", float(n), trending_score=n / 3, last_event_ms=n)
        for n in range(300)
    ]
    factors = {f"i{n}": [n / 10, 1.0, -n / 7] for n in range(0, 300, 2)}
    covisit = {
        f"i{n}": ([f"i{(n * 7 + k) % 300}" for k in range(1, 6)], [1.0 + k for k in range(5)])
        for n in range(300)
    }
    calls = []
    plain = build_snapshot(rows, 5).with_models(item_factors=factors, covisitation=covisit)
    paced = build_snapshot(rows, 5, pace=lambda: calls.append(1)).with_models(
        item_factors=factors, covisitation=covisit, pace=lambda: calls.append(1)
    )
    assert len(calls) > 600  # per item of each loop, not once per call
    assert plain.item_ids == paced.item_ids and plain.index_of == paced.index_of
    for column in ("price", "trending_score", "last_event_ms", "available", "counts"):
        assert np.array_equal(getattr(plain, column), getattr(paced, column))
    assert np.array_equal(plain.item_factors, paced.item_factors)
    assert plain.covisitation.keys() == paced.covisitation.keys()
    for i, (nbs, ws) in plain.covisitation.items():
        assert np.array_equal(nbs, paced.covisitation[i][0])
        assert np.array_equal(ws, paced.covisitation[i][1])
