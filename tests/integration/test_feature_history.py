"""Feature history end to end: a Taobao replay through the real job and writer lands in
the offline store, and ``FeatureStore.get_historical_features`` returns what each user's
row said at chosen timestamps, checked against values recomputed from the file.

Users whose events all go to the clickstream topic (views and cart adds) are picked:
one topic and one partition per user keeps their events in file order through the job,
so the row after the file's i-th event of a user is that user's state after i events.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import pandas as pd
import pytest

from feature_repo.names import USER_PROFILE
from personalization import offline_store
from personalization.feature_store import feature_store
from personalization.settings import Settings
from tests.identity import stored_id
from tests.waiting import wait_for
from traffic.replay import TaobaoRow, dataset_path, load_taobao
from traffic.sender import TrafficSender

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv.gz"
FEATURES = ["events_total", "last_seen_ms", "recent_items", "cart_items", "add_to_cart_24h"]


def pick_users(rows: list[TaobaoRow], n: int) -> dict[str, list[TaobaoRow]]:
    """The first ``n`` users (by id) with 4+ events, all views or cart adds, at distinct
    seconds (so every gap has a timestamp strictly between two rows)."""
    by_user: dict[str, list[TaobaoRow]] = defaultdict(list)
    for row in rows:
        by_user[row.user_id].append(row)
    picked: dict[str, list[TaobaoRow]] = {}
    for user in sorted(by_user):
        events = sorted(by_user[user], key=lambda r: (r.timestamp_s, r.line_no))
        times = [r.timestamp_s for r in events]
        if (
            len(events) >= 4
            and all(r.behavior in ("pv", "cart") for r in events)
            and len(set(times)) == len(times)
        ):
            picked[user] = events
        if len(picked) == n:
            break
    return picked


def expected_at(events: list[TaobaoRow], upto: int, shift_ms: int, prefix: str) -> dict[str, Any]:
    """The user's features after their first ``upto`` events, from the file alone
    (item ids carry the run's ``prefix``, as sent)."""
    seen = events[:upto]
    recent: list[str] = []
    for r in reversed(seen):
        if r.behavior == "pv" and prefix + r.item_id not in recent:
            recent.append(prefix + r.item_id)
    carted: list[str] = []
    for r in seen:
        if r.behavior == "cart" and prefix + r.item_id not in carted:
            carted.append(prefix + r.item_id)
    return {
        "events_total": len(seen),
        "last_seen_ms": seen[-1].timestamp_s * 1000 + shift_ms,
        "recent_items": recent[:20],
        "cart_items": sorted(carted),
        # The sample spans under two hours: every cart add is within 24 h.
        "add_to_cart_24h": sum(r.behavior == "cart" for r in seen),
    }


def test_historical_features_are_point_in_time_correct(pipeline: Settings) -> None:
    rows = load_taobao(dataset_path(TAOBAO, pipeline))
    picked = pick_users(rows, 12)
    assert len(picked) == 12
    # Whole hours into the recent past, as test_pipeline's replay does.
    now_ms = int(time.time() * 1000)
    newest = max(r.timestamp_s for r in rows) * 1000
    shift_ms = ((now_ms - newest) // HOUR_MS - 1) * HOUR_MS
    prefix = f"hist-{uuid.uuid4().hex[:8]}-"
    ordered = sorted(
        (r for events in picked.values() for r in events), key=lambda r: (r.timestamp_s, r.line_no)
    )

    def events() -> Any:
        for row in ordered:
            event = row.to_event()
            event["user_id"] = prefix + row.user_id
            event["event_id"] = prefix + event["event_id"]
            # Items too: the session's pipeline is shared, and test_pipeline checks the
            # real item ids' view counts against the whole file.
            event["item_id"] = prefix + event["item_id"]
            event["event_time"] = row.timestamp_s * 1000 + shift_ms
            yield event

    assert TrafficSender(pipeline, rate=0).send(events()).sent == len(ordered)

    stored = {user: stored_id(pipeline, prefix + user) for user in picked}
    final = {stored[u]: len(ev) for u, ev in picked.items()}

    seen: dict[str, int] = {}

    def all_flushed() -> bool | None:
        table = offline_store.read_view(pipeline.history_path, USER_PROFILE)
        done: dict[str, int] = {}
        for r in table.select(["user_id", "events_total"]).to_pylist():
            if r["user_id"] in final:
                done[r["user_id"]] = max(done.get(r["user_id"], 0), r["events_total"])
        seen.update(done)
        return done == final or None

    try:
        wait_for(all_flushed, 120, "every picked user's last row in the feature history", 1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: events_total seen {seen}, want {final}") from None

    # Query times: before the first event, inside every gap, and after the last one.
    queries: list[tuple[str, int, int]] = []  # (user, time ms, events before it)
    for user, evs in picked.items():
        times = [r.timestamp_s * 1000 + shift_ms for r in evs]
        queries.append((user, times[0] - 500, 0))
        for i in range(1, len(times)):
            queries.append((user, (times[i - 1] + times[i]) // 2, i))
        queries.append((user, times[-1] + 60_000, len(times)))
    entity_df = pd.DataFrame(
        {
            "user_id": [stored[u] for u, _, _ in queries],
            "event_timestamp": pd.to_datetime([t for _, t, _ in queries], unit="ms", utc=True),
            "query": range(len(queries)),
        }
    )
    training = offline_store.training_set(
        feature_store(pipeline), entity_df, [f"{USER_PROFILE}:{f}" for f in FEATURES]
    ).set_index("query")
    assert training.index.tolist() == list(range(len(queries)))

    checked = 0
    for q, (user, _t, upto) in enumerate(queries):
        got = training.loc[q]
        if upto == 0:
            assert pd.isna(got["events_total"]), (user, got.to_dict())
            continue
        want = expected_at(picked[user], upto, shift_ms, prefix)
        actual = {
            "events_total": int(got["events_total"]),
            "last_seen_ms": int(got["last_seen_ms"]),
            "recent_items": list(got["recent_items"]),
            "cart_items": sorted(got["cart_items"]),
            "add_to_cart_24h": int(got["add_to_cart_24h"]),
        }
        assert actual == want, (user, upto)
        checked += 1
    assert checked == sum(len(ev) for ev in picked.values())
