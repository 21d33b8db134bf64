"""When a consumer's group membership counts as stalled (personalization/group_consumer.py)."""

from __future__ import annotations

from personalization.group_consumer import GroupHealth


def stats(state: str, join_state: str) -> dict[str, object]:
    return {"name": "rdkafka#consumer-1", "cgrp": {"state": state, "join_state": join_state}}


def test_a_steady_member_never_stalls() -> None:
    health = GroupHealth(stall_s=30)
    for t in range(0, 300, 5):
        health.observe(stats("up", "steady"), float(t))
    assert health.state == ("up", "steady")
    assert not health.stalled(300.0)


def test_stalls_once_unsteady_for_the_whole_stall_time() -> None:
    health = GroupHealth(stall_s=30)
    health.observe(stats("up", "steady"), 0.0)
    health.observe(stats("up", "init"), 10.0)  # session timed out: revoked, to rejoin
    health.observe(stats("wait-coord", "init"), 20.0)
    assert not health.stalled(39.9)
    assert health.stalled(40.0)


def test_a_rejoin_in_time_resets_the_clock() -> None:
    health = GroupHealth(stall_s=30)
    health.observe(stats("up", "wait-join"), 0.0)
    health.observe(stats("up", "steady"), 20.0)
    health.observe(stats("up", "wait-sync"), 25.0)
    assert not health.stalled(50.0)
    assert health.stalled(55.0)


def test_zero_stall_time_never_stalls_and_no_group_state_is_no_evidence() -> None:
    off = GroupHealth(stall_s=0)
    off.observe(stats("query-coord", "init"), 0.0)
    assert not off.stalled(1e9)
    health = GroupHealth(stall_s=30)
    health.observe({"name": "rdkafka#producer-1"}, 0.0)  # no "cgrp": nothing known
    assert health.state is None and not health.stalled(1e9)
