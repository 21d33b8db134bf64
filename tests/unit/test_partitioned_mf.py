"""The online MF partitioned by key (user half, item half, the item-factor feed)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from feature_repo.names import ITEM_CF, USER_CF
from flink_jobs import item_factor_feed, learning
from flink_jobs.local import LocalPipeline
from personalization.events import CONSENT, CONSENT_PROPERTY
from personalization.settings import Settings

CFG = learning.LearnerConfig(factors=8, negatives=2, seed=3)
T0 = int(time.time() * 1000) - 3_600_000


def raw_event(
    user: str, item: str, t: int, *, event_id: str, event_type: str = "product_view", **extra: Any
) -> str:
    event = {"event_id": event_id, "user_id": user, "event_type": event_type, "event_time": t}
    if item:
        event["item_id"] = item
    return json.dumps(event | extra)


def test_the_halves_together_are_the_textbook_step_without_negatives():
    cfg = learning.LearnerConfig(factors=8, negatives=0, seed=3)
    user = learning.init_vector("u", "u", cfg)
    item = learning.init_vector("i", "i", cfg)
    ref_user, ref_item = user.copy(), item.copy()
    learning.sgd_update(ref_user, ref_item, np.zeros((0, 8), np.float32), 3.0, cfg)

    before = user.copy()
    learning.learn_user_half(user, item, np.zeros((0, 8), np.float32), 3.0, cfg)
    learning.learn_item_half(item, before, np.zeros((0, 8), np.float32), 3.0, cfg)
    np.testing.assert_allclose(user, ref_user, rtol=1e-6)
    np.testing.assert_allclose(item, ref_item, rtol=1e-6)


def test_the_user_half_reads_item_rows_and_never_writes_them():
    user = learning.init_vector("u", "u", CFG)
    item = learning.init_vector("i", "i", CFG)
    negs = np.stack([learning.init_vector(f"n{k}", "i", CFG) for k in range(2)])
    item0, negs0, user0 = item.copy(), negs.copy(), user.copy()
    learning.learn_user_half(user, item, negs, 1.0, CFG)
    np.testing.assert_array_equal(item, item0)
    np.testing.assert_array_equal(negs, negs0)
    assert not np.array_equal(user, user0)


@pytest.mark.parametrize("loss", ["squared", "bpr"])
@pytest.mark.parametrize("negatives", [0, 1, 4])
def test_the_user_half_is_sgd_updates_user_row_bit_for_bit(loss: str, negatives: int):
    """learn_user_half skips the item rows' updates sgd_update makes; the user's row
    must come out identical, over many steps (errors would compound)."""
    cfg = learning.LearnerConfig(factors=16, negatives=negatives, seed=3, loss=loss)
    rng = np.random.default_rng(negatives)
    user = rng.standard_normal(16).astype(np.float32)
    reference = user.copy()
    for step in range(200):
        positive = rng.standard_normal(16).astype(np.float32)
        negs = rng.standard_normal((negatives, 16)).astype(np.float32)
        weight = float(1 + step % 3)
        learning.sgd_update(reference, positive.copy(), negs.copy(), weight, cfg)
        learning.learn_user_half(user, positive, negs, weight, cfg)
        np.testing.assert_array_equal(user, reference)


@pytest.mark.parametrize("loss", ["squared", "bpr"])
def test_the_item_half_moves_towards_its_user_and_away_from_others(loss: str):
    cfg = learning.LearnerConfig(factors=8, negatives=2, seed=3, loss=loss)
    rng = np.random.default_rng(0)
    user = rng.standard_normal(8).astype(np.float32)
    other = rng.standard_normal(8).astype(np.float32)
    item = np.zeros(8, dtype=np.float32) + 0.01
    for _ in range(100):
        learning.learn_item_half(item, user, other[None, :], 1.0, cfg)
    # Its user scores high; the other user (a negative) well below: towards 0 (squared)
    # or below 0 (logistic).
    assert float(item @ user) > 0.5
    assert float(item @ other) < 0.5 * float(item @ user)
    if loss == "bpr":
        assert float(item @ other) < 0


def test_known_items_keep_the_newest_version_and_start_unknown_items_as_the_item_side():
    known = learning.KnownItems(CFG)
    assert np.array_equal(known.vector("new"), learning.init_vector("new", "i", CFG))
    assert known.put("a", np.ones(8, np.float32), 10)
    assert not known.put("a", np.zeros(8, np.float32), 9)  # an older record, reordered
    assert known.vector("a").tolist() == [1.0] * 8
    assert known.put("a", np.full(8, 2.0, np.float32), 11)
    assert known.vector("a").tolist() == [2.0] * 8
    with pytest.raises(ValueError):
        known.put("b", np.ones(3, np.float32), 1)


def test_known_items_negatives_never_include_the_positive():
    known = learning.KnownItems(CFG)
    assert known.negatives("a").shape == (0, 8)
    for n in range(20):
        known.put(f"i{n}", np.full(8, float(n), np.float32), 1)
    for _ in range(50):
        negs = known.negatives("i3")
        assert negs.shape == (2, 8)
        assert 3.0 not in negs[:, 0]


def test_recent_users_ring_is_bounded_and_samples_what_it_holds():
    recent = learning.RecentUsers(CFG, capacity=4)
    assert recent.sample().shape == (0, 8)
    for n in range(10):
        recent.add(np.full(8, float(n), np.float32))
    assert len(recent) == 4
    held = {float(row[0]) for _ in range(30) for row in recent.sample()}
    assert held <= {6.0, 7.0, 8.0, 9.0}


def test_feed_records_round_trip_and_foreign_records_are_refused():
    factors = item_factor_feed.to_bytes(np.arange(8, dtype=np.float32))
    decoded = item_factor_feed.decode(item_factor_feed.encode("i-1", 42, factors))
    assert decoded is not None
    item, version, vec = decoded
    assert (item, version, vec.tolist()) == ("i-1", 42, list(map(float, range(8))))
    vec[0] = 9.0  # writable, not a view of the record
    nan = item_factor_feed.to_bytes(np.full(8, np.nan, np.float32))
    for bad in (
        "",
        "{}",
        "not json",
        '{"i": "x", "v": 1, "f": "%%%"}',
        item_factor_feed.encode("", 1, factors),
        item_factor_feed.encode("x", 1, nan),
    ):
        assert item_factor_feed.decode(bad) is None


def _pipeline() -> LocalPipeline:
    return LocalPipeline(Settings(), pickled=True)


def test_pipeline_emits_both_cf_rows_versioned_like_their_key_rows():
    pipe = _pipeline()
    t = T0
    for n, (user, item) in enumerate([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]):
        pipe.send(raw_event(user, item, t + n * 1000, event_id=f"e{n}"))
    rows = pipe.output.rows
    user_cf = [r for r in rows if r.view == USER_CF]
    item_cf = [r for r in rows if r.view == ITEM_CF]
    assert len(user_cf) == 4 and len(item_cf) == 4
    for row in user_cf + item_cf:
        assert len(row.features["cf_vector"]) == Settings().learning.factors
    # Each key's versions only grow, so Feast never keeps an older factor row.
    for view_rows in (user_cf, item_cf):
        by_key: dict[str, list[int]] = {}
        for row in view_rows:
            by_key.setdefault(row.entity_id, []).append(row.version_us)
        assert all(v == sorted(set(v)) for v in by_key.values())
    # The feed brought the item side's factors to the user side.
    known = pipe.user_step.known_items
    assert set(known.ids) == {"a", "b"}
    item_a = pipe.item_factors("a")
    assert item_a is not None
    np.testing.assert_array_equal(known.vector("a"), item_a)
    assert pipe.user_factors("u2") == user_cf[-1].features["cf_vector"]
    assert pipe.cf_updates == 4


def test_denied_consent_learns_nothing():
    pipe = _pipeline()
    t = T0
    consent = {CONSENT_PROPERTY: "denied"}
    pipe.send(raw_event("u1", "", t, event_id="c", event_type=CONSENT, properties=consent))
    pipe.send(raw_event("u1", "a", t + 1000, event_id="v"))
    assert pipe.cf_updates == 0
    assert not [r for r in pipe.output.rows if r.view in (USER_CF, ITEM_CF)]


def test_a_user_arms_one_timer_until_it_fires():
    from flink_jobs import profile, steps
    from personalization.events import Event

    settings = Settings()
    step = steps.UserStep(settings.features, settings.privacy, settings.learning)
    gap = settings.features.session_gap_s * 1000
    user = None
    registered: list[int] = []
    for n in range(20):  # one session: its end moves with every event
        event = Event(
            event_id=f"e{n}", user_id="u", event_type="page_view", event_time_ms=T0 + n * 1000
        )
        result = step.on_event(user, event)
        user = result.state
        registered += result.timers
    assert len(registered) == 1  # armed once, not once per event
    assert T0 + gap <= registered[0] <= T0 + gap + 1
    assert user is not None
    fired, timers = step.on_timer(user, registered[0])
    assert fired == []  # the session went on: nothing ended at the first arming
    # Re-armed once, at the session's real end.
    assert timers == profile.due_timers(user, settings.features)
    assert T0 + 19_000 + gap <= timers[0] <= T0 + 19_000 + gap + 1
    fired, timers = step.on_timer(user, timers[0])
    # Then only the retention expiry is due: the user's last change + retention_days.
    expiry = user.version_us // 1000 + settings.privacy.retention_days * 86_400_000
    assert timers == [expiry] and user.timer_ms == expiry
    assert step.expired(user, expiry - 1) is None
    erase = step.expired(user, expiry)
    assert erase is not None and erase.erase and erase.version_us > user.version_us
