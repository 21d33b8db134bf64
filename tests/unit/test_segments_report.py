"""``personalize segments`` (pure part): each user's latest row, segment sizes, and per
cluster the users, top categories and mean RFM."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from feature_repo.names import USER_PROFILE
from ops import segments as report
from personalization import offline_store
from personalization.feature_updates import FeatureUpdate

T0_US = 1_511_658_000_000_000
DAY_MS = 86_400_000


def row(user: str, version_us: int, **features: object) -> FeatureUpdate:
    base: dict[str, object] = {"events_total": 1, "segments": ["new"], "cluster_id": 0}
    base.update(features)
    return FeatureUpdate(USER_PROFILE, user, version_us, base)


def test_latest_row_per_user_and_summary_from_the_history(tmp_path: Path) -> None:
    offline_store.write_rows(
        tmp_path,
        [
            row("u1", T0_US, interest_categories=["shoes"], interest_scores=[1.0]),
            # u1 later: a buyer in cluster 3 (only this row counts).
            row(
                "u1",
                T0_US + 10,
                events_total=6,
                segments=["buyer"],
                cluster_id=3,
                cluster_distance=0.2,
                interest_categories=["books", "shoes"],
                interest_scores=[3.0, 1.0],
                frequency=2,
                monetary=40.0,
                last_purchase_ms=T0_US // 1000 - 2 * DAY_MS,
                last_seen_ms=T0_US // 1000,
            ),
            row(
                "u2",
                T0_US + 5,
                events_total=2,
                segments=["new", "mobile"],
                cluster_id=3,
                cluster_distance=0.4,
                interest_categories=["books"],
                interest_scores=[0.5],
            ),
            row("u3", T0_US, events_total=1, cluster_id=1),
        ],
    )
    table = offline_store.read_view(tmp_path, USER_PROFILE).select(list(report.COLUMNS))
    latest = report.latest_rows(table.to_pylist())
    assert len(latest) == 3
    got = report.summarize(latest)
    assert got.users == 3
    assert got.segments == {"buyer": 1, "new": 2, "mobile": 1}
    assert list(got.clusters) == [1, 3]
    c3 = got.clusters[3]
    assert c3.users == 2
    assert c3.distance_sum / c3.users == pytest.approx(0.3)
    assert c3.purchases_sum == 2 and c3.spent_sum == 40.0 and c3.events_sum == 8
    assert c3.recency_days == [2.0]
    # books: 0.75 of u1's interest + all of u2's; shoes: 0.25 of u1's.
    assert c3.top_categories(5) == [
        ("books", pytest.approx(1.75 / 2)),
        ("shoes", pytest.approx(0.25 / 2)),
    ]
    lines = report.render(got)
    assert lines[0] == "users: 3"
    assert any(line.split()[:2] == ["3", "2"] and "books 88%" in line for line in lines)


def test_users_without_a_cluster_are_shown_apart() -> None:
    ts = datetime(2017, 11, 26, tzinfo=UTC)
    got = report.summarize(
        [{"user_id": "u1", "event_timestamp": ts, "events_total": 3, "cluster_id": None}]
    )
    assert list(got.clusters) == [-1]
    assert any(line.strip().startswith("none") for line in report.render(got))
