"""The A/B report: aggregate attribution records per variant and compare (pure + I/O).

``totals_by_variant`` turns the job's ``ab_outcomes`` records into per-variant totals:
impressions are recommendation lists shown, CTR is lists clicked / lists shown,
conversion is users with an attributed purchase / users exposed, revenue is per exposed
user. ``report`` adds intervals and the comparison with the control (the experiment's
first variant, or the one named ``control``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from analysis import ab_stats
from personalization.settings import Settings


@dataclass(frozen=True, slots=True)
class VariantReport:
    totals: ab_stats.VariantTotals
    ctr: ab_stats.Rate
    conversion: ab_stats.Rate
    revenue_per_user: ab_stats.Rate
    comparisons: list[ab_stats.Comparison]


def totals_by_variant(
    records: Iterable[dict[str, Any]],
) -> dict[str, dict[str, ab_stats.VariantTotals]]:
    """experiment -> variant -> totals."""
    lists: dict[tuple[str, str], int] = defaultdict(int)
    clicked: dict[tuple[str, str], int] = defaultdict(int)
    user_revenue: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    buyers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in records:
        key = (record.get("experiment") or "", record.get("variant") or "")
        if not key[0]:
            continue
        lists[key] += 1
        clicked[key] += bool(record.get("clicked"))
        user = str(record.get("user_id"))
        revenues = user_revenue[key]
        revenues[user] = revenues.get(user, 0.0) + float(record.get("revenue", 0.0))
        if record.get("purchased"):
            buyers[key].add(user)
    out: dict[str, dict[str, ab_stats.VariantTotals]] = defaultdict(dict)
    for (experiment, variant), shown in lists.items():
        revenues = user_revenue[(experiment, variant)]
        out[experiment][variant] = ab_stats.VariantTotals(
            variant=variant,
            users=len(revenues),
            impressions=shown,
            clicks=clicked[(experiment, variant)],
            conversions=len(buyers[(experiment, variant)]),
            revenue=sum(revenues.values()),
            revenue_sq=sum(r * r for r in revenues.values()),
        )
    return dict(out)


def control_of(variants: dict[str, ab_stats.VariantTotals], control: str | None) -> str:
    if control and control in variants:
        return control
    if "control" in variants:
        return "control"
    return sorted(variants)[0]


def report(
    variants: dict[str, ab_stats.VariantTotals], control: str | None = None
) -> dict[str, VariantReport]:
    base = variants[control_of(variants, control)]
    out = {}
    for name, t in sorted(variants.items()):
        out[name] = VariantReport(
            totals=t,
            ctr=ab_stats.wilson(t.clicks, t.impressions),
            conversion=ab_stats.wilson(t.conversions, t.users),
            revenue_per_user=ab_stats.revenue_per_user(t),
            comparisons=[] if t is base else ab_stats.compare(t, base),
        )
    return out


def format_report(experiment: str, reports: dict[str, VariantReport]) -> str:
    lines = [
        f"experiment {experiment}",
        f"{'variant':12} {'users':>7} {'lists':>7} {'CTR [95% CI]':>24} "
        f"{'conversion [95% CI]':>26} {'revenue/user [95% CI]':>28}",
    ]

    def rate(r: ab_stats.Rate, pct: bool = True) -> str:
        if pct:
            return f"{r.value * 100:6.2f}% [{r.low * 100:5.2f}, {r.high * 100:5.2f}]"
        return f"{r.value:8.3f} [{r.low:7.3f}, {r.high:7.3f}]"

    for name, r in reports.items():
        t = r.totals
        lines.append(
            f"{name:12} {t.users:7d} {t.impressions:7d} {rate(r.ctr):>24} "
            f"{rate(r.conversion):>26} {rate(r.revenue_per_user, pct=False):>28}"
        )
    for name, r in reports.items():
        for c in r.comparisons:
            verdict = "significant" if c.p_value < 0.05 else "not significant"
            lines.append(
                f"  {name} vs {c.control} {c.metric:10}: lift {c.lift * 100:+.1f}%, "
                f"z {c.z:+.2f}, p {c.p_value:.4f} ({verdict}), "
                f"P(beats control) {c.prob_beats_control:.3f}"
            )
    return "\n".join(lines)


def read_outcomes(settings: Settings, idle_s: float = 3.0, max_s: float = 60.0) -> list[dict]:
    """All attribution records on the ``ab_outcomes`` topic (read_committed)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"pz-ab-report-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.kafka.ab_outcomes_topic])
    records: list[dict] = []
    started = last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - started < max_s:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            for msg in batch:
                if msg.error() is None:
                    records.append(json.loads(msg.value() or b"{}"))
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()
    return records
