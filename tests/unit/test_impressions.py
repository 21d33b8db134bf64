"""Impression counting in the user state (flink_jobs/impressions.py): no services needed."""

from __future__ import annotations

import itertools
import random

from flink_jobs import impressions, profile
from flink_jobs.impressions import Impression, ImpressionLog, from_exposure, record, row_fields
from personalization.exposures import Exposure, parse_exposure
from personalization.settings import FeatureSettings

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000


def imp(rec: str, t: int, items=("a", "b"), categories=("shoes", "books")) -> Impression:
    return Impression(rec, "u-1", tuple(items), tuple(categories), t)


def fields(log: ImpressionLog) -> dict:
    return row_fields(log)


def test_counts_items_and_categories_most_recent_first():
    log = ImpressionLog()
    record(log, imp("r1", T0), DAY, 100, 10)
    record(log, imp("r2", T0 + HOUR, items=("b", "c"), categories=("books", "books")), DAY, 100, 10)
    row = fields(log)
    assert row["impressed_items"] == ["b", "c", "a"]
    assert row["impressed_item_counts"] == [2, 1, 1]
    assert row["impressed_item_last_ms"] == [T0 + HOUR, T0 + HOUR, T0]
    assert row["impressed_categories"] == ["books", "shoes"]
    assert row["impressed_category_counts"] == [3, 1]


def test_impressions_leave_the_window():
    log = ImpressionLog()
    record(log, imp("r1", T0), DAY, 100, 10)
    record(log, imp("r2", T0 + 2 * HOUR, items=("a",), categories=("shoes",)), DAY, 100, 10)
    record(log, imp("r3", T0 + DAY + HOUR, items=("c",), categories=("toys",)), DAY, 100, 10)
    row = fields(log)
    # r1 is older than a day before the newest impression: gone; r2 still counts.
    counts = dict(zip(row["impressed_items"], row["impressed_item_counts"], strict=True))
    assert counts == {"c": 1, "a": 1}
    assert "books" not in row["impressed_categories"]


def test_counts_do_not_depend_on_arrival_order():
    shown = [imp(f"r{i}", T0 + i * 7 * HOUR, items=(f"i{i % 3}", "x")) for i in range(6)]
    rows = []
    for order in itertools.permutations(shown):
        log = ImpressionLog()
        for one in order:
            record(log, one, DAY, 100, 10)
        rows.append(fields(log))
    assert all(r == rows[0] for r in rows)
    # Shown last together (ties by id); the first ones left the window.
    assert rows[0]["impressed_items"][:2] == ["i2", "x"]
    assert rows[0]["impressed_item_counts"][1] == 4  # x: impressions at 14 h .. 35 h


def test_tracked_items_are_bounded_keeping_the_most_recent():
    log = ImpressionLog()
    for i in range(10):
        record(log, imp(f"r{i}", T0 + i, items=(f"i{i}",), categories=("c",)), DAY, 4, 10)
    assert fields(log)["impressed_items"] == ["i9", "i8", "i7", "i6"]


def test_exposure_becomes_impression_and_survives_the_wire():
    exposure = Exposure("rec-1", "u-1", "exp", "v", "hybrid_v1", ("a", "b"), T0, ("x", "y"))
    parsed = parse_exposure(exposure.to_json())
    assert parsed == exposure
    impression = from_exposure(parsed)
    assert impression.categories == ("x", "y") and impression.event_id == "impression:rec-1"
    # Exposures from older servers have no categories: items still count.
    legacy = Exposure("rec-2", "u-1", "", "", "blend_v1", ("a",), T0)
    assert from_exposure(legacy).categories == ("",)


def test_user_state_counts_impressions_once_and_not_when_opted_out():
    cfg = FeatureSettings()
    state = profile.new_state("u-1")
    assert profile.apply_impression(state, imp("r1", T0), cfg).changed
    redelivered = profile.apply_impression(state, imp("r1", T0), cfg)
    assert redelivered.duplicate and not redelivered.changed
    row = profile.user_feature_row(state, cfg)
    assert row["impressed_item_counts"] == [1, 1]
    assert state.version_us >= T0 * 1000

    denied = profile.new_state("u-2", consent="denied")
    assert profile.apply_impression(denied, imp("r2", T0), cfg).opted_out
    assert not profile.user_feature_row(denied, cfg)["impressed_items"]


def test_most_recent_first_orders_by_last_time_then_by_key() -> None:
    """Against the definition, on tables full of ties (a Recommend answer's items share
    their time): newest last time first, equal times by key."""
    rng = random.Random(7)
    for _ in range(200):
        table = {
            f"i{rng.randrange(500)}": sorted(rng.randrange(20) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(0, 60))
        }
        expected = sorted(table, key=lambda k: (-table[k][-1], k))
        assert impressions._most_recent_first(table) == expected
