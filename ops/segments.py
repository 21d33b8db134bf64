"""``personalize segments``: rule segment sizes and what each learned cluster is.

Reads the feature history (``personalization/offline_store.py``): each user's latest
``user_profile`` row, so it needs no running stack and sees every user the writer ever
applied (within ``history.keep_days``). For each cluster: its users, mean distance to
the centroid, the categories holding most of its users' interest, and mean RFM.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from feature_repo.names import USER_PROFILE
from personalization import offline_store
from personalization.ranked import by_weight
from personalization.settings import Settings

__all__ = ["ClusterSummary", "SegmentReport", "add_commands", "latest_rows", "summarize"]

COLUMNS = (
    "user_id",
    "event_timestamp",
    "segments",
    "cluster_id",
    "cluster_distance",
    "interest_categories",
    "interest_scores",
    "frequency",
    "monetary",
    "last_purchase_ms",
    "last_seen_ms",
    "events_total",
)
_DAY_MS = 86_400_000


@dataclass
class ClusterSummary:
    cluster: int
    users: int = 0
    distance_sum: float = 0.0
    purchases_sum: float = 0.0
    spent_sum: float = 0.0
    events_sum: float = 0.0
    # Days since the last purchase, over the users who purchased.
    recency_days: list[float] = field(default_factory=list)
    # Category -> sum over users of that category's share of the user's interest.
    interest: Counter[str] = field(default_factory=Counter)

    def top_categories(self, n: int) -> list[tuple[str, float]]:
        """The categories holding most of the cluster's interest, with their share."""
        total = sum(self.interest.values())
        if total <= 0:
            return []
        ranked = by_weight(self.interest, n)
        return [(c, w / total) for c, w in ranked]


@dataclass
class SegmentReport:
    users: int
    segments: Counter[str]
    clusters: dict[int, ClusterSummary]


def latest_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each user's newest row (by its version timestamp)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        current = newest.get(row["user_id"])
        if current is None or row["event_timestamp"] > current["event_timestamp"]:
            newest[row["user_id"]] = row
    return list(newest.values())


def summarize(rows: Iterable[Mapping[str, Any]]) -> SegmentReport:
    """Rule segment sizes and per-cluster figures over users' latest rows."""
    segments: Counter[str] = Counter()
    clusters: dict[int, ClusterSummary] = {}
    users = 0
    for row in rows:
        if row.get("events_total") is None:
            continue  # an erased or empty row
        users += 1
        segments.update(row.get("segments") or [])
        cid = row.get("cluster_id")
        cid = -1 if cid is None else int(cid)
        summary = clusters.setdefault(cid, ClusterSummary(cid))
        summary.users += 1
        summary.distance_sum += float(row.get("cluster_distance") or 0.0)
        summary.purchases_sum += int(row.get("frequency") or 0)
        summary.spent_sum += float(row.get("monetary") or 0.0)
        summary.events_sum += int(row.get("events_total") or 0)
        last_purchase = int(row.get("last_purchase_ms") or 0)
        if last_purchase > 0:
            seen = int(row.get("last_seen_ms") or last_purchase)
            summary.recency_days.append(max(0, seen - last_purchase) / _DAY_MS)
        categories = row.get("interest_categories") or []
        scores = row.get("interest_scores") or []
        total = sum(s for s in scores if s > 0)
        if total > 0:
            for category, score in zip(categories, scores, strict=False):
                if score > 0:
                    summary.interest[category] += score / total
    return SegmentReport(users, segments, dict(sorted(clusters.items())))


def render(report: SegmentReport, top: int = 3) -> list[str]:
    lines = [f"users: {report.users:,}"]
    if not report.users:
        return lines
    lines.append("rule segments:")
    for name, count in by_weight(report.segments):
        lines.append(f"  {name:<16} {count:>9,}  {100 * count / report.users:5.1f} %")
    lines.append(
        "clusters:  id     users  share  distance  purchases    spent  recency_d  events"
        "  top categories"
    )
    for cid, c in report.clusters.items():
        n = max(1, c.users)
        recency = sum(c.recency_days) / len(c.recency_days) if c.recency_days else float("nan")
        cats = ", ".join(f"{name} {share:.0%}" for name, share in c.top_categories(top))
        label = f"{cid:>3}" if cid >= 0 else "none"
        lines.append(
            f"  {label:<8} {c.users:>9,} {100 * c.users / report.users:5.1f}%"
            f"  {c.distance_sum / n:8.3f}  {c.purchases_sum / n:9.2f} {c.spent_sum / n:8.2f}"
            f"  {recency:9.1f} {c.events_sum / n:7.1f}  {cats}"
        )
    return lines


def cmd_segments(settings: Settings, args: argparse.Namespace) -> int:
    root = settings.history_path
    since = None
    if args.days:
        since = (datetime.now(tz=UTC) - timedelta(days=args.days)).date()
    table = offline_store.read_view(root, USER_PROFILE, since=since).select(list(COLUMNS))
    print(f"feature history: {root} ({table.num_rows:,} user rows)")
    for line in render(summarize(latest_rows(table.to_pylist())), top=args.top):
        print(line)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``segments`` on the ``personalize`` subparsers."""
    parser = sub.add_parser(
        "segments", help="rule segment sizes, each cluster's top categories and RFM"
    )
    parser.add_argument("--days", type=int, default=0, help="only rows of the last N days")
    parser.add_argument("--top", type=int, default=3, help="categories shown per cluster")
    parser.set_defaults(func=cmd_segments)
