"""Online CF (flink_jobs/learning.py): learns, round-trips, is deterministic, pickles."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from flink_jobs.learning import (
    LearnerConfig,
    OnlineMF,
    PrequentialReport,
    init_vector,
    interaction_weight,
    prequential,
    score_items,
)
from personalization.events import ADD_TO_CART, PRODUCT_VIEW, PURCHASE, RATING, SEARCH

CFG = LearnerConfig(factors=8, learning_rate=0.1, negatives=4, seed=7)
ACTION = [f"action-{i}" for i in range(10)]
ROMANCE = [f"romance-{i}" for i in range(10)]


def planted_stream(rounds: int = 60):
    """Users 0-9 like action, 10-19 romance; each round every user touches one item."""
    for r in range(rounds):
        for u in range(20):
            items = ACTION if u < 10 else ROMANCE
            yield f"u{u}", items[(u + r) % 10], 1.0, r


def trained(cfg: LearnerConfig = CFG) -> OnlineMF:
    mf = OnlineMF(cfg)
    for user, item, weight, t in planted_stream():
        mf.learn_one(user, item, weight, t)
    return mf


def test_interaction_weights():
    assert interaction_weight(PRODUCT_VIEW) == 1.0
    assert interaction_weight(ADD_TO_CART) == 3.0
    assert interaction_weight(PURCHASE) == 5.0
    assert interaction_weight(RATING, 4.0) == 4.0
    assert interaction_weight(SEARCH) == 0.0


@pytest.mark.parametrize("loss", ["squared", "bpr"])
def test_learner_recovers_a_planted_preference(loss):
    mf = trained(LearnerConfig(factors=8, learning_rate=0.1, seed=7, loss=loss))
    ids = mf.item_ids
    for user, liked in (("u0", ACTION), ("u15", ROMANCE)):
        vec = mf.user_vector(user)
        assert vec is not None
        scores = score_items(vec, mf.item_matrix)
        top10 = {ids[i] for i in np.argsort(-scores)[:10]}
        assert len(top10 & set(liked)) >= 9, (user, top10)


def test_rank_puts_the_planted_preference_first():
    mf = trained()
    ranked = mf.rank("u15", [*ACTION, *ROMANCE, "unknown"])
    assert len(set(ranked[:10]) & set(ROMANCE)) >= 9
    assert mf.rank("nobody", ["b", "a"]) == ["b", "a"]  # all 0.0: as given


def test_new_user_learns_within_a_few_interactions():
    mf = trained()
    for item in ROMANCE[:3]:
        mf.learn_one("newcomer", item, 5.0)
    vec = mf.user_vector("newcomer")
    assert vec is not None
    romance = np.mean([mf.predict_one("newcomer", i) for i in ROMANCE[3:]])
    action = np.mean([mf.predict_one("newcomer", i) for i in ACTION])
    assert romance > action


def test_unknown_keys():
    mf = OnlineMF(CFG)
    assert mf.user_vector("nobody") is None and mf.item_vector("nothing") is None
    assert mf.predict_one("nobody", "nothing") == 0.0
    assert mf.export_user("nobody") is None


def test_same_seed_same_model_and_keyed_init():
    a, b = trained(), trained()
    assert np.array_equal(a.item_matrix, b.item_matrix)
    assert a.export_factors() == b.export_factors()
    # A key's initial vector does not depend on what else was seen first.
    assert np.array_equal(init_vector("x", "u", CFG), init_vector("x", "u", CFG))
    assert not np.array_equal(init_vector("x", "u", CFG), init_vector("x", "i", CFG))
    other = trained(LearnerConfig(factors=8, learning_rate=0.1, seed=8))
    assert not np.array_equal(a.item_matrix, other.item_matrix)


def test_initial_vectors_are_the_same_on_every_thread_and_normal():
    # The user and item operators draw them on two threads of one interpreter, each
    # thread with its own generator: the key alone decides the vector.
    keys = [f"item-{i}" for i in range(2000)]
    expected = [init_vector(k, "i", CFG) for k in keys]
    got: dict[int, list[np.ndarray]] = {}

    def draw(t: int) -> None:
        got[t] = [init_vector(k, "i", CFG) for k in keys]

    threads = [threading.Thread(target=draw, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(a, b) for t in got for a, b in zip(got[t], expected, strict=True))
    vectors = np.stack(expected)
    assert vectors.dtype == np.float32 and vectors.shape == (2000, CFG.factors)
    assert abs(float(vectors.mean())) < 0.1 * CFG.init_std
    assert float(vectors.std()) == pytest.approx(CFG.init_std, rel=0.05)
    assert abs(np.corrcoef(vectors[:, 0], vectors[:, 1])[0, 1]) < 0.1


def test_export_import_round_trip():
    mf = trained()
    exported = mf.export_factors()
    user = exported["users"]["u3"]
    assert len(user) == 8 and all(isinstance(x, float) for x in user)
    restored = OnlineMF(CFG)
    restored.import_factors(exported)
    for item in ACTION + ROMANCE:
        assert restored.predict_one("u3", item) == pytest.approx(mf.predict_one("u3", item))
    # Per key, as a job would load user state and item state separately.
    single = OnlineMF(CFG)
    single.import_user("u3", mf.export_user("u3") or [])
    single.import_item("action-1", mf.export_item("action-1") or [])
    assert single.predict_one("u3", "action-1") == pytest.approx(mf.predict_one("u3", "action-1"))
    with pytest.raises(ValueError):
        single.import_user("bad", [0.0] * 3)
    with pytest.raises(ValueError):
        single.import_item("bad", [float("nan")] * 8)


def test_pickle_round_trip_keeps_learning_identically():
    mf = trained()
    copy = pickle.loads(pickle.dumps(mf))
    mf.learn_one("u1", "action-3", 1.0)
    copy.learn_one("u1", "action-3", 1.0)
    assert np.array_equal(mf.item_matrix, copy.item_matrix)


def test_dirty_keys_name_what_changed():
    mf = OnlineMF(CFG)
    for i in range(10):
        mf.learn_one("a", f"i{i}", 1.0)
    mf.drain_dirty()
    mf.learn_one("b", "i3", 1.0)
    users, items = mf.drain_dirty()
    assert users == {"b"}
    assert "i3" in items and len(items) == 1 + CFG.negatives
    assert mf.drain_dirty() == (set(), set())


def test_popularity_sampling_runs_and_non_positive_weights_are_ignored():
    mf = trained(LearnerConfig(factors=8, negative_sampling="popularity", seed=1))
    before = mf.updates
    mf.learn_one("u1", "action-1", 0.0)
    assert mf.updates == before


def test_prequential_report_by_hand():
    report = PrequentialReport(k=2)
    for rank in (0, 1, 2, None):
        report.add(rank)
    assert report.hit_rate == 0.5
    assert report.ndcg == pytest.approx((1.0 + 1 / np.log2(3)) / 4)


def test_prequential_evaluates_before_learning():
    mf = OnlineMF(CFG)
    stream = list(planted_stream(rounds=30))
    reports = list(prequential(mf, stream, k=5))
    final = reports[-1]
    assert final.events == len(stream)
    # The very first event cannot be predicted: nothing is known yet.
    assert reports[0].hits == 0
    assert final.hit_rate > 0.5  # 5 of ~10 unseen items per group; random is lower
