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

    from serving.catalog_snapshot import _PACE_EVERY, ItemRow, build_snapshot

    rows = [
        ItemRow(f"i{n}", f"c{n % 7}", float(n), trending_score=n / 3, last_event_ms=n)
        for n in range(300)
    ]
    factors = {f"i{n}": [n / 10, 1.0, -n / 7] for n in range(0, 300, 2)}
    covisit = {
        f"i{n}": ([f"i{(n * 7 + k) % 300}" for k in range(1, 6)], [1.0 + k for k in range(5)])
        for n in range(300)
    }
    calls: list[str] = []
    plain = build_snapshot(rows, 5).with_models(item_factors=factors, covisitation=covisit)
    paced = build_snapshot(rows, 5, pace=lambda: calls.append("build")).with_models(
        item_factors=factors, covisitation=covisit, pace=lambda: calls.append("models")
    )
    assert calls.count("build") > 3  # between columns, not once per call
    # Inside each loop of the models, every _PACE_EVERY items: the factors (150 items),
    # the stored lists (300) and the symmetric lists (300 positions).
    assert calls.count("models") >= (150 + 300 + 300) // _PACE_EVERY
    assert plain.item_ids == paced.item_ids and plain.index_of == paced.index_of
    for column in ("price", "trending_score", "last_event_ms", "available", "counts"):
        assert np.array_equal(getattr(plain, column), getattr(paced, column))
    assert np.array_equal(plain.item_factors, paced.item_factors)
    assert plain.covisitation.keys() == paced.covisitation.keys()
    for i, (nbs, ws) in plain.covisitation.items():
        assert np.array_equal(nbs, paced.covisitation[i][0])
        assert np.array_equal(ws, paced.covisitation[i][1])


def _reference_models(snapshot, factors, covisit):  # type: ignore[no-untyped-def]
    """The models as with_models built them item by item before it was vectorised."""
    import numpy as np

    from serving.catalog_snapshot import symmetric_neighbours

    n = len(snapshot.item_ids)
    width = len(next(iter(factors.values())))
    matrix = np.zeros((n, width), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    for item_id, vector in factors.items():
        i = snapshot.index_of.get(item_id)
        if i is not None and len(vector) == width:
            matrix[i] = vector
            mask[i] = True
    sources, targets, weights = [], [], []
    for item_id, (neighbours, item_weights) in covisit.items():
        i = snapshot.index_of.get(item_id)
        if i is None:
            continue
        for nb, w in zip(neighbours, item_weights, strict=False):
            j = snapshot.index_of.get(nb)
            if j is not None and j != i and w > 0:
                sources.append(i)
                targets.append(j)
                weights.append(float(w))
    lists = symmetric_neighbours(
        np.array(sources, dtype=np.int64),
        np.array(targets, dtype=np.int64),
        np.array(weights, dtype=np.float64),
        n,
    )
    return matrix, mask, lists


def test_vectorised_models_equal_the_item_by_item_build():
    """Unknown items and neighbours, self-pairs, weights <= 0 or NaN, lists and weights
    of different lengths, factors of another width, factors as lists or float32 arrays."""
    import random

    import numpy as np

    from serving.catalog_snapshot import ItemRow, build_snapshot

    rng = random.Random(3)
    rows = [ItemRow(f"i{n}", f"c{n % 5}", float(n), trending_score=1.0) for n in range(200)]
    snapshot = build_snapshot(rows, 5)
    factors: dict[str, object] = {}
    for n in range(0, 220, 3):  # i200+ are not in the catalog
        vector = [rng.uniform(-1, 1) for _ in range(4 if n != 9 else 3)]  # i9: other width
        factors[f"i{n}"] = np.asarray(vector, dtype=np.float32) if n % 2 else vector
    weight_choices = [0.5, 1.0, 2.5, 0.0, -1.0, float("nan")]
    covisit = {}
    for n in range(0, 230, 2):
        neighbours = [f"i{rng.randrange(240)}" for _ in range(rng.randrange(0, 12))]
        neighbours.append(f"i{n}")  # a self-pair, dropped
        weights = [rng.choice(weight_choices) for _ in range(len(neighbours) - n % 3)]
        covisit[f"i{n}"] = (neighbours, weights)
    built = snapshot.with_models(item_factors=factors, covisitation=covisit)  # type: ignore[arg-type]
    matrix, mask, lists = _reference_models(snapshot, factors, covisit)
    assert np.array_equal(built.item_factors, matrix) and np.array_equal(built.factor_mask, mask)
    assert not built.factor_mask[snapshot.index_of["i9"]]
    assert built.covisitation.keys() == lists.keys() and len(lists) > 50
    for i, (nbs, ws) in lists.items():
        assert np.array_equal(built.covisitation[i][0], nbs)
        assert np.array_equal(built.covisitation[i][1], ws)
        assert i not in built.covisitation[i][0]
    with pytest.raises(ValueError):  # views of shared arrays: read-only
        built.covisitation[next(iter(lists))][1][0] = 9.0
