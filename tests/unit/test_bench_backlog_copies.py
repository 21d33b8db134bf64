"""bench/ingest/backlog.py: the dataset several times over, each copy its own users."""

from __future__ import annotations

from bench.ingest.backlog import with_copies


def test_copies_have_their_own_users_and_ids_and_merge_in_time_order() -> None:
    events = [
        {"event_id": "a", "user_id": "1", "item_id": "i", "event_time": 1_700_000_000_010},
        {"event_id": "b", "user_id": "2", "item_id": "j", "event_time": 1_700_000_000_020},
        {"event_id": "c", "user_id": "1", "item_id": "j", "event_time": "2023-11-14T22:13:20.030Z"},
    ]
    assert with_copies(events, 1) is events
    out = with_copies(events, 3)
    users = [e["user_id"] for e in out]
    assert users == ["1", "1~c1", "1~c2", "2", "2~c1", "2~c2", "1", "1~c1", "1~c2"]
    assert len({e["event_id"] for e in out}) == 9  # ids stay unique
    assert [e["item_id"] for e in out[:3]] == ["i"] * 3  # the catalog is shared
    assert events[0]["user_id"] == "1" and len(events) == 3  # the input is left alone
