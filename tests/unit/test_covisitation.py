"""Co-visitation and content similarity (pure)."""

from __future__ import annotations

import pickle

import pytest

from flink_jobs.covisitation import (
    CoVisitation,
    CoVisitConfig,
    History,
    Neighbors,
    add_edge,
    edges_for,
    push_history,
)
from personalization.content import ContentIndex, jaccard

DAY_MS = 86_400_000


def test_items_seen_together_become_neighbours():
    cv = CoVisitation(CoVisitConfig(history=3))
    for user in ("a", "b", "c"):
        for t, item in enumerate(("tent", "stove", "lamp")):
            cv.learn_one(user, item, 1.0, t)
    cv.learn_one("d", "tent", 1.0, 10)
    cv.learn_one("d", "novel", 1.0, 11)
    top = cv.neighbors("tent", 2)
    assert [item for item, _ in top] == ["stove", "lamp"]
    assert dict(cv.neighbors("tent", 10))["novel"] < top[0][1]
    # Symmetric.
    assert "tent" in dict(cv.neighbors("stove", 5))
    assert cv.recent("a") == ["lamp", "stove", "tent"]


def test_history_keeps_the_last_items_newest_first_and_distinct():
    cfg = CoVisitConfig(history=3)
    h = History()
    for t, item in enumerate(["a", "b", "a", "c", "d"]):
        push_history(h, item, t, cfg)
    assert [i for i, _ in h.items] == ["d", "c", "a"]


def test_edges_weigh_newer_history_more_and_respect_the_gap():
    cfg = CoVisitConfig(history=3, position_decay=0.5, max_gap_s=60)
    h = History(items=[("b", 100_000), ("a", 90_000), ("old", 0)])
    edges = edges_for(h, "c", 110_000, 1.0, cfg)
    weights = {(s, d): w for s, d, w, _ in edges}
    assert weights[("b", "c")] == 1.0 and weights[("c", "b")] == 1.0
    assert weights[("a", "c")] == 0.5
    assert ("old", "c") not in weights  # 110 s apart > 60 s


def test_decay_halves_weight_per_half_life():
    cfg = CoVisitConfig(half_life_s=DAY_MS / 1000)
    state = Neighbors()
    add_edge(state, "x", 1.0, 0, cfg)
    add_edge(state, "y", 1.0, DAY_MS, cfg)
    w = state.weights_at(DAY_MS, cfg.half_life_s)
    assert w["x"] == pytest.approx(0.5) and w["y"] == pytest.approx(1.0)
    # Far in the future the origin moves and nothing overflows.
    add_edge(state, "z", 1.0, 100 * DAY_MS, cfg)
    assert state.top(1, 100 * DAY_MS, cfg.half_life_s) == [("z", pytest.approx(1.0))]


def test_neighbour_lists_are_capped():
    cfg = CoVisitConfig(neighbors=3, capacity=5)
    state = Neighbors()
    for i in range(20):
        add_edge(state, f"n{i}", 1.0 + i, 0, cfg)
        assert len(state.scaled) <= 5
    assert [n for n, _ in state.top(3, 0, cfg.half_life_s)] == ["n19", "n18", "n17"]


def test_state_pickles_and_exports_feature_arrays():
    cv = CoVisitation(CoVisitConfig(history=2))
    for t, item in enumerate(("x", "y", "z")):
        cv.learn_one("u", item, 1.0, t)
    restored = pickle.loads(pickle.dumps(cv))
    assert restored.neighbors("y") == cv.neighbors("y")
    ids, weights = cv.export_item("y")
    assert set(ids) == {"x", "z"} and len(weights) == 2


def test_predict_one_scores_like_serving_each_anchor_relative_to_its_best():
    cv = CoVisitation(CoVisitConfig(position_decay=0.5))
    cv.histories["u"] = History(items=[("b", 20), ("a", 10)])  # newest first
    cv.items["a"] = Neighbors(scaled={"x": 4.0, "y": 1.0})
    cv.items["b"] = Neighbors(scaled={"x": 3.0}, origin_ms=5)
    # x: 3/3 from b (newest, weight 1) + 4/4 from a (weight 0.5); y: 1/4 from a.
    assert cv.predict_one("u", "x") == pytest.approx(1.5)
    assert cv.predict_one("u", "y") == pytest.approx(0.125)
    assert cv.predict_one("u", "z") == 0.0 and cv.predict_one("stranger", "x") == 0.0
    assert cv.rank("u", ["z", "y", "x"]) == ["x", "y", "z"]


def test_content_similarity_by_jaccard():
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    index = ContentIndex.build(
        {"m1": ["action", "sci-fi"], "m2": ["action", "sci-fi"], "m3": ["action"], "m4": ["drama"]}
    )
    similar = index.similar("m1", 5)
    assert similar[0] == ("m2", 1.0)
    assert similar[1] == ("m3", pytest.approx(0.5))
    assert "m4" not in dict(similar)
    assert index.similar("unknown") == []
