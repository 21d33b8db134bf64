"""Segments in experiment targeting and in ranking by segment (pure)."""

from __future__ import annotations

import pytest

from personalization.experiments import assignment_for, parse_experiments
from personalization.segments import strategy_for, user_segments
from personalization.settings import Settings

NOW = 1_700_000_000_000


def experiments(first_segments: list[str] | None) -> list:
    first: dict = {
        "name": "buyers-test",
        "variants": [
            {"name": "control", "strategy": "blend_v1"},
            {"name": "hybrid", "strategy": "hybrid_v1"},
        ],
    }
    if first_segments is not None:
        first["segments"] = first_segments
    everyone = {
        "name": "everyone",
        "variants": [
            {"name": "a", "strategy": "blend_v1"},
            {"name": "b", "strategy": "hybrid_v2"},
        ],
    }
    return parse_experiments({"experiments": [first, everyone]})


def test_a_targeted_experiment_takes_only_users_in_its_segments() -> None:
    parsed = experiments(["loyal", "cluster:3"])
    assert parsed[0].segments == {"loyal", "cluster:3"}
    users = [f"u{i}" for i in range(50)]
    # Users in neither segment fall through to the next experiment.
    outside = [assignment_for(parsed, u, NOW, ("buyer", "cluster:4")) for u in users]
    assert {a.experiment for a in outside if a} == {"everyone"} and all(outside)
    # In one of them (a rule segment or the learned cluster): the targeted experiment.
    for tags in (("loyal",), ("new", "cluster:3")):
        inside = [assignment_for(parsed, u, NOW, tags) for u in users]
        assert {a.experiment for a in inside if a} == {"buyers-test"} and all(inside)
    # Without a row (no segments) only untargeted experiments apply.
    assert assignment_for(parsed, "u1", NOW) == assignment_for(parsed, "u1", NOW, ("x",))
    # The variant within the experiment does not depend on the segments.
    a = assignment_for(parsed, "u7", NOW, ("loyal",))
    b = assignment_for(parsed, "u7", NOW, ("loyal", "cluster:3", "mobile"))
    assert a == b


def test_an_untargeted_experiment_takes_everyone() -> None:
    parsed = experiments(None)
    assert parsed[0].segments == frozenset()
    assert assignment_for(parsed, "u1", NOW, ()).experiment == "buyers-test"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [["Loyal"], ["cluster:x"], "loyal", [3], ["cluster:"]])
def test_bad_segments_name_the_experiment(bad: object) -> None:
    with pytest.raises(ValueError, match=r"buyers-test.*segments"):
        experiments(bad)  # type: ignore[arg-type]


def test_user_segments_add_the_cluster_once_assigned() -> None:
    assert user_segments(["buyer", "mobile"], 5) == ("buyer", "mobile", "cluster:5")
    assert user_segments(["new"], -1) == ("new",)


def test_ranking_by_segment_first_entry_wins() -> None:
    strategies = {"loyal": "hybrid_v2", "cluster:2": "hybrid_v1"}
    assert strategy_for(strategies, ("buyer", "loyal", "cluster:2")) == "hybrid_v2"
    assert strategy_for(strategies, ("buyer", "cluster:2")) == "hybrid_v1"
    assert strategy_for(strategies, ("buyer",)) is None
    assert strategy_for({}, ("loyal",)) is None


def test_ranking_by_segment_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PZ_SEGMENTS__STRATEGIES", '{"loyal": "hybrid_v2"}')
    assert Settings().segments.strategies == {"loyal": "hybrid_v2"}
