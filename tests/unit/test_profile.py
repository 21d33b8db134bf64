"""Per-user state transitions, features and triggers (pure)."""

from __future__ import annotations

import pickle
import random

from flink_jobs import profile, windows
from flink_jobs.triggers import BROWSE_INTENT, CART_ABANDONED, QUICK_EXIT, load_rules
from personalization.events import Event
from personalization.settings import FeatureSettings

CFG = FeatureSettings()
# The default rule file's cart_abandoned idle time.
CART_IDLE_MS = next(r for r in load_rules(CFG.triggers) if r.name == CART_ABANDONED).within_ms  # type: ignore[attr-defined]
T0 = 1_700_000_000_000
MIN = 60_000


def ev(kind: str, t: int, item: str = "i1", category: str = "shoes", **kw) -> Event:
    n = kw.pop("n", None)
    eid = kw.pop("event_id", f"{kind}-{item}-{t}-{n}")
    return Event(
        event_id=eid,
        user_id="u1",
        event_type=kind,
        event_time_ms=t,
        item_id=item,
        category=category,
        **kw,
    )


def run(events: list[Event], cfg: FeatureSettings = CFG):
    state = profile.new_state("u1")
    fired = []
    for event in events:
        fired.extend(profile.apply_event(state, event, cfg).triggers)
    return state, fired


def test_window_counts_match_independent_count():
    rng = random.Random(7)
    times = sorted(T0 + rng.randrange(0, 30 * 3600_000) for _ in range(300))
    kinds = [rng.choice(["product_view", "add_to_cart", "purchase"]) for _ in times]
    state, _ = run([ev(k, t, n=i) for i, (k, t) in enumerate(zip(kinds, times, strict=True))])
    counts = profile.window_counts(state)
    for spec in windows.window_specs():
        for kind in ("product_view", "add_to_cart", "purchase"):
            expected = windows.count_in_window(
                [t for k, t in zip(kinds, times, strict=True) if k == kind], spec, times[-1]
            )
            assert counts[f"{kind}_{spec.name}"] == expected, (kind, spec.name)


def test_out_of_order_events_give_the_same_counts_and_interest():
    rng = random.Random(3)
    events = [
        ev(
            rng.choice(["product_view", "add_to_cart"]),
            T0 + rng.randrange(0, 3600_000),
            category=rng.choice("abc"),
            n=i,
        )
        for i in range(200)
    ]
    ordered, _ = run(sorted(events, key=lambda e: e.event_time_ms))
    shuffled, _ = run(events)
    assert profile.window_counts(ordered) == profile.window_counts(shuffled)
    for category, score in ordered.interests.items():
        assert abs(shuffled.interests[category] - score) < 1e-6 * max(1.0, score)


def test_duplicates_are_dropped():
    state = profile.new_state("u1")
    first = profile.apply_event(state, ev("product_view", T0, event_id="same"), CFG)
    again = profile.apply_event(state, ev("product_view", T0, event_id="same"), CFG)
    assert not first.duplicate and again.duplicate
    assert state.events_total == 1
    assert profile.window_counts(state)["product_view_5m"] == 1


def test_dedup_memory_is_bounded():
    cfg = FeatureSettings(dedup_max_ids=16)
    state, _ = run([ev("page_view", T0 + i, n=i) for i in range(100)], cfg)
    assert len(state.seen_ids) <= 16


def test_cart_purchase_and_rfm():
    state, _ = run(
        [
            ev("add_to_cart", T0, item="a", price=10.0),
            ev("add_to_cart", T0 + 1, item="b", price=5.0),
            ev("remove_from_cart", T0 + 2, item="b"),
            ev("purchase", T0 + 3, item="a", price=10.0, quantity=2),
        ]
    )
    row = profile.user_feature_row(state, CFG)
    assert row["cart_items"] == []
    assert row["purchased_items"] == ["a"]
    assert row["frequency"] == 1
    assert row["monetary"] == 20.0
    assert row["last_purchase_ms"] == T0 + 3
    assert "buyer" in row["segments"]


def test_interest_decays_with_half_life():
    cfg = FeatureSettings(interest_half_life_s=3600)
    state, _ = run(
        [ev("product_view", T0, category="old"), ev("product_view", T0 + 3600_000, category="new")],
        cfg,
    )
    assert abs(state.interests["old"] - 0.5) < 1e-9
    assert state.interests["new"] == 1.0
    assert profile.top_interests(state)[0][0] == "new"


def test_recent_items_newest_first_distinct():
    state, _ = run([ev("product_view", T0 + i, item=f"i{i % 3}", n=i) for i in range(5)])
    assert state.recent_items == ["i1", "i0", "i2"]


def test_sessions_split_on_gap():
    gap = CFG.session_gap_s * 1000
    state, _ = run(
        [
            ev("page_view", T0, n=1),
            ev("page_view", T0 + 1000, n=2),
            ev("page_view", T0 + 1000 + gap + 1, n=3),
        ]
    )
    assert state.sessions.count == 2
    assert state.sessions.current.events == 1


def test_browse_intent_fires_once_per_window():
    events = [ev("product_view", T0 + i * MIN, item=f"i{i}", n=i) for i in range(6)]
    _, fired = run(events)
    browse = [t for t in fired if t.trigger == BROWSE_INTENT]
    assert len(browse) == 1
    assert browse[0].time_ms == T0 + 2 * MIN
    assert browse[0].evidence["items"] == ["i0", "i1", "i2"]


def test_browse_intent_needs_views_within_window():
    events = [ev("product_view", T0 + i * 6 * MIN, item=f"i{i}", n=i) for i in range(5)]
    _, fired = run(events)
    assert not [t for t in fired if t.trigger == BROWSE_INTENT]


def test_cart_abandoned_fires_from_timer_once():
    state, _ = run([ev("add_to_cart", T0, item="a")])
    due = profile.due_timers(state, CFG)
    cart_due = T0 + CART_IDLE_MS
    assert cart_due in due
    assert profile.advance_time(state, cart_due - 1, CFG) == []
    fired = profile.advance_time(state, cart_due, CFG)
    assert [t.trigger for t in fired if t.trigger == CART_ABANDONED] == [CART_ABANDONED]
    assert fired[-1].evidence["items"] == ["a"]
    assert profile.advance_time(state, cart_due + 1, CFG) == []


def test_cart_abandoned_detected_by_later_event_at_due_time():
    late = T0 + CART_IDLE_MS + 5 * MIN
    _, fired = run([ev("add_to_cart", T0, item="a"), ev("page_view", late)])
    abandoned = [t for t in fired if t.trigger == CART_ABANDONED]
    assert len(abandoned) == 1
    assert abandoned[0].time_ms == T0 + CART_IDLE_MS


def test_no_abandonment_after_purchase():
    state, _ = run([ev("add_to_cart", T0, item="a"), ev("purchase", T0 + MIN, item="a")])
    fired = profile.advance_time(state, T0 + 10 * 3600_000, CFG)
    assert all(t.trigger != CART_ABANDONED for t in fired)
    assert not state.cart


def test_quick_exit_on_single_view_session():
    state, _ = run([ev("page_view", T0)])
    fired = profile.advance_time(state, T0 + CFG.session_gap_s * 1000 + 1, CFG)
    assert [t.trigger for t in fired] == [QUICK_EXIT]
    assert profile.advance_time(state, T0 + 2 * CFG.session_gap_s * 1000, CFG) == []


def test_no_quick_exit_for_engaged_session():
    state, _ = run([ev("page_view", T0 + i * 20_000, n=i) for i in range(5)])
    assert profile.advance_time(state, T0 + 10 * CFG.session_gap_s * 1000, CFG) == []


def test_version_strictly_increases_even_at_equal_times():
    state = profile.new_state("u1")
    versions = []
    for i in range(3):
        profile.apply_event(state, ev("product_view", T0, item=f"i{i}", n=i), CFG)
        versions.append(state.version_us)
    assert versions[0] < versions[1] < versions[2]


def test_state_pickles_small():
    state, _ = run([ev("product_view", T0 + i * MIN, item=f"i{i}", n=i) for i in range(30)])
    blob = pickle.dumps(state)
    assert pickle.loads(blob) == state
    assert len(blob) < 8192


def test_late_event_joins_the_session_a_timer_closed():
    state, _ = run([ev("page_view", T0, n=1), ev("page_view", T0 + 60_000, n=2)])
    profile.advance_time(state, T0 + 60_000 + CFG.session_gap_s * 1000 + 1, CFG)
    assert state.sessions.current.ended
    profile.apply_event(state, ev("page_view", T0 + 30_000, n=3), CFG)
    assert state.sessions.count == 1
    assert state.sessions.current.events == 3


def test_sessions_do_not_depend_on_arrival_order():
    gap = CFG.session_gap_s * 1000
    times = [T0, T0 + 60_000, T0 + gap + 120_001, T0 + 3 * gap, T0 + 3 * gap + 5]
    events = [ev("page_view", t, n=i) for i, t in enumerate(times)]
    for order in (events, events[::-1], [events[2], events[0], events[4], events[1], events[3]]):
        state, _ = run(order)
        assert state.sessions.count == 3
        assert state.sessions.current.events == 2


def test_cart_is_last_writer_wins_by_event_time():
    # The purchase (another topic) arrives before the add-to-cart it follows.
    state, _ = run([ev("purchase", T0 + MIN, item="a"), ev("add_to_cart", T0, item="a")])
    assert state.cart == {}
    state, _ = run([ev("add_to_cart", T0, item="a"), ev("purchase", T0 + MIN, item="a")])
    assert state.cart == {}
    state, _ = run([ev("purchase", T0, item="a"), ev("add_to_cart", T0 + MIN, item="a")])
    assert state.cart == {"a": 1}


def test_time_of_day_and_weekend_features_in_utc():
    import datetime as dt

    def at(day: int, hour: int, minute: int = 0) -> int:
        when = dt.datetime(2026, 12, day, hour, minute, tzinfo=dt.UTC)
        return int(when.timestamp() * 1000)

    # 2026-12-05 is a Saturday, 12-07 a Monday.
    times = [at(7, 20), at(7, 20, 30), at(5, 20, 5), at(5, 9), at(7, 9, 1)]
    state, _ = run([ev("product_view", t, item=f"i{n}") for n, t in enumerate(times)])
    row = profile.user_feature_row(state, CFG)
    assert row["peak_hour"] == 20
    assert row["weekend_share"] == 0.4  # 2 of 5 on the Saturday
    assert sum(state.hour_counts) == state.events_total == 5
    # A duplicate counts nowhere; a tie between hours goes to the earlier one.
    again, _ = run([ev("product_view", at(7, 9)), ev("product_view", at(7, 9))])
    assert sum(again.hour_counts) == 1
    tie, _ = run([ev("click", at(7, 22), item="a"), ev("click", at(7, 3), item="b")])
    assert profile.user_feature_row(tie, CFG)["peak_hour"] == 3
    assert profile.user_feature_row(profile.new_state("x"), CFG)["peak_hour"] == -1
    # The order of arrival does not matter.
    shuffled, _ = run(
        [ev("product_view", t, item=f"i{n}") for n, t in reversed(list(enumerate(times)))]
    )
    assert shuffled.hour_counts == state.hour_counts
    assert shuffled.weekend_events == state.weekend_events
