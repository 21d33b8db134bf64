"""Streaming clustering of user profiles (pure): the vector, the online k-means, the
parallel scheme (subtasks seeded alike agree on labels) and ``segment_changed``."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from feature_repo.names import USER_PROFILE
from flink_jobs import clustering, profile
from flink_jobs.steps import UserStep
from personalization.events import Event
from personalization.feature_updates import FeatureUpdate
from personalization.settings import FeatureSettings, PrivacySettings, SegmentSettings

DIMS = 8
T0 = 1_700_000_000_000
DAY = 86_400_000


def vector(interests: dict[str, float], purchases: int = 0, monetary: float = 0.0) -> np.ndarray:
    last = T0 - DAY if purchases else 0
    return clustering.profile_vector(interests, purchases, monetary, 10, last, T0, DIMS)


def test_the_profile_vector_is_a_mix_plus_bounded_rfm() -> None:
    v = vector({"shoes": 3.0, "hats": 1.0}, purchases=2, monetary=80.0)
    assert v.shape == (DIMS + clustering.RFM_DIMS,)
    assert v[:DIMS].sum() == pytest.approx(1.0)
    assert v[clustering.category_bucket("shoes", DIMS)] >= 0.75
    recency, frequency, monetary, activity = v[DIMS:]
    assert recency == pytest.approx(np.exp(-1 / 30))
    assert 0 < frequency < 1 and 0 < monetary < 1 and 0 < activity < 1
    # Scale only matters through the mix: decayed scores give the same interests.
    assert np.allclose(vector({"shoes": 0.3, "hats": 0.1})[:DIMS], v[:DIMS])
    # Never purchased: no recency; huge figures are capped at 1.
    capped = clustering.profile_vector({}, 10_000, 1e9, 10**7, 0, T0, DIMS)
    assert capped[DIMS] == 0.0 and capped[DIMS + 1 :].tolist() == [1.0, 1.0, 1.0]
    assert capped[:DIMS].sum() == 0.0


def test_category_buckets_are_stable_across_processes() -> None:
    # CRC-32, not Python's salted hash(): the same bucket on every TaskManager.
    assert clustering.category_bucket("4145813", 16) == 14
    assert clustering.category_bucket("4145813", 8) == 6


def test_subtasks_start_from_the_same_centroids() -> None:
    cfg = SegmentSettings(clusters=16, category_dims=DIMS)
    a, b = clustering.Clusters(cfg), clustering.Clusters(cfg)
    assert a.k == 16
    assert np.array_equal(a.centroids, b.centroids)


def test_seeds_are_anchored_a_browser_and_a_buyer_per_bucket() -> None:
    clusters = clustering.Clusters(SegmentSettings(clusters=16, category_dims=DIMS))
    shoes = clustering.category_bucket("shoes", DIMS)
    browser = clusters.assign(vector({"shoes": 1.0})).cluster
    buyer = clusters.assign(vector({"shoes": 1.0}, purchases=8, monetary=2_000)).cluster
    assert (browser, buyer) == (shoes, DIMS + shoes)


def test_learning_moves_the_centroid_of_the_vectors_cell() -> None:
    clusters = clustering.Clusters(SegmentSettings(clusters=16, category_dims=DIMS))
    v = vector({"shoes": 1.0, "hats": 0.5}, purchases=1, monetary=50)
    before = clusters.centroids.copy()
    cell = int(np.argmin(np.linalg.norm(clusters.seeds - v, axis=1)))
    found = clusters.learn(v)
    assert found.distance == pytest.approx(np.linalg.norm(before[found.cluster] - v))
    # The first vector of a cell is its centroid (step 1 / count = 1); the rest stay.
    assert np.allclose(clusters.centroids[cell], v)
    others = [j for j in range(16) if j != cell]
    assert np.array_equal(clusters.centroids[others], before[others])
    assert clusters.assign(v).cluster == cell
    assert clusters.assign(v).distance == pytest.approx(0.0, abs=1e-12)
    # The next vectors of the cell move it to their running mean.
    w = vector({"shoes": 1.0}, purchases=1, monetary=50)
    if int(np.argmin(np.linalg.norm(clusters.seeds - w, axis=1))) == cell:
        clusters.learn(w)
        assert np.allclose(clusters.centroids[cell], (v + w) / 2)


def test_two_subtasks_on_disjoint_users_agree_on_the_ids() -> None:
    """The scheme at parallelism 2: each subtask learns from its own users, seeded alike;
    a user gets the same cluster id on either subtask, and kinds of users are told apart
    (also browsers from buyers of the same categories)."""
    rng = np.random.default_rng(3)

    def make(categories: tuple[str, ...], purchases: int) -> np.ndarray:
        interests = {c: 1 + rng.random() for c in categories}
        return vector(interests, purchases=purchases, monetary=300.0 * purchases)

    groups = [
        (("shoes", "socks"), 0),
        (("books",), 5),
        (("toys", "games"), 0),
        (("shoes", "socks"), 4),
    ]
    cfg = SegmentSettings(clusters=16, category_dims=DIMS)
    shards = [clustering.Clusters(cfg), clustering.Clusters(cfg)]
    for _ in range(300):
        for shard in shards:
            for group in groups:
                shard.learn(make(*group))
    agree = total = 0
    ids: list[set[int]] = []
    for group in groups:
        seen: set[int] = set()
        for _ in range(50):
            v = make(*group)
            a, b = (shard.assign(v).cluster for shard in shards)
            agree += a == b
            total += 1
            seen |= {a, b}
        ids.append(seen)
    assert agree / total >= 0.95
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            assert not ids[i] & ids[j], (groups[i], groups[j])


def test_a_user_is_clustered_first_then_per_session_or_every_n_events() -> None:
    clusters = clustering.Clusters(SegmentSettings(update_every_events=5))
    fresh = (clustering.NO_CLUSTER, 0.0, 0)
    assert clusters.due(fresh, 1, new_session=False)
    assigned = (2, 0.5, 10)
    assert not clusters.due(assigned, 14, new_session=False)
    assert clusters.due(assigned, 15, new_session=False)
    assert clusters.due(assigned, 11, new_session=True)


def profile_row(rows: list[FeatureUpdate]) -> dict[str, Any]:
    (row,) = [r for r in rows if r.view == USER_PROFILE]
    return row.features


def ev(i: int, t: int, category: str, kind: str = "product_view", price: float = 0.0) -> Event:
    return Event(
        event_id=f"e{i}",
        user_id="u1",
        event_type=kind,
        event_time_ms=t,
        item_id=f"{category}-{i % 3}",
        category=category,
        price=price,
    )


def test_segment_changed_fires_when_the_users_cluster_moves() -> None:
    step = UserStep(
        FeatureSettings(),
        PrivacySettings(),
        segments=SegmentSettings(update_every_events=4),
    )
    state = None
    rows = []
    changes = []
    t = T0
    # A browser of shoes, then, in a later session, a big buyer of books.
    for i in range(8):
        t += 30_000
        result = step.on_event(state, ev(i, t, "shoes"))
        state = result.state
        rows.append(profile_row(result.rows))
        changes += [x for x in result.triggers if x.trigger == clustering.SEGMENT_CHANGED]
    assert state is not None and state.cluster[0] != clustering.NO_CLUSTER
    first = state.cluster[0]
    assert rows[0]["cluster_id"] == first  # clustered at the first event
    assert changes == []
    t += DAY
    for i in range(8, 40):
        t += 30_000
        result = step.on_event(state, ev(i, t, "books", "purchase", price=400.0))
        state = result.state
        rows.append(profile_row(result.rows))
        changes += [x for x in result.triggers if x.trigger == clustering.SEGMENT_CHANGED]
    assert state is not None and state.cluster[0] != first
    assert changes, "no segment_changed trigger"
    change = changes[0]
    assert change.user_id == "u1" and change.kind == clustering.TRIGGER_KIND
    assert change.evidence["from_cluster"] == first
    assert change.evidence["to_cluster"] != first
    # The row after the change carries the new cluster and its distance.
    assert rows[-1]["cluster_id"] == state.cluster[0]
    assert rows[-1]["cluster_distance"] == state.cluster[1] >= 0.0
    # Clustering ran only when due: at most once per session start and per 4 events.
    assert len(changes) <= 1 + (40 - 8) // 4


def test_clustering_off_leaves_no_cluster() -> None:
    step = UserStep(FeatureSettings(), PrivacySettings(), segments=SegmentSettings(clusters=0))
    result = step.on_event(None, ev(0, T0, "shoes"))
    assert result.state is not None and result.state.cluster[0] == clustering.NO_CLUSTER
    assert profile_row(result.rows)["cluster_id"] == clustering.NO_CLUSTER


def test_the_cluster_survives_pickling_of_the_state() -> None:
    step = UserStep(FeatureSettings(), PrivacySettings())
    result = step.on_event(None, ev(0, T0, "shoes"))
    assert result.state is not None
    restored = pickle.loads(pickle.dumps(result.state))
    assert isinstance(restored, profile.UserState)
    assert restored.cluster == result.state.cluster
