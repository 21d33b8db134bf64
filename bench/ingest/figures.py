"""The ingest figures from the samples, and the check of every user's row in Redis."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from typing import Any

from bench.ingest.sampling import Sample
from personalization.settings import Settings

# --- figures ---------------------------------------------------------------------------


def _first(samples: list[Sample], pred: Any) -> Sample | None:
    return next((s for s in samples if pred(s)), None)


def _rate(a: Sample | None, b: Sample | None, attr: str) -> float | None:
    if a is None or b is None or b.t <= a.t:
        return None
    return round((getattr(b, attr) - getattr(a, attr)) / (b.t - a.t), 1)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9), "max": round(ordered[-1], 1)}


def figures(samples: list[Sample], n: int, windows: dict[str, Any]) -> dict[str, Any]:
    final = samples[-1]
    up = _first(samples, lambda s: s.job_up)
    first = _first(samples, lambda s: s.consumed > 0)
    done = _first(samples, lambda s: s.consumed >= n)
    cf_done = _first(samples, lambda s: s.cf_updates >= final.cf_updates > 0)
    drained = _first(
        samples, lambda s: s.consumed >= n and s.rows_committed >= final.rows_emitted > 0
    )
    a = _first(samples, lambda s: s.t >= windows.get("steady_from_t", math.inf))
    b = _first(samples, lambda s: s.t >= windows.get("steady_to_t", math.inf))
    per_interval: list[float] = []
    if a is not None and b is not None:
        inside = [s for s in samples if a.t <= s.t <= b.t]
        per_interval = [
            (y.consumed - x.consumed) / (y.t - x.t) for x, y in itertools.pairwise(inside)
        ]

    def at(s: Sample | None) -> float | None:
        return None if s is None else s.t

    out: dict[str, Any] = {
        "metrics_endpoint_up_s": at(up),
        "first_event_s": at(first),
        "last_event_consumed_s": at(done),
        "cf_last_update_s": at(cf_done),
        "drained_s": at(drained),
        "consumed": final.consumed,
        "dead_letters": final.dead_letters,
        "duplicates_dropped": final.duplicates,
        "cf_updates": final.cf_updates,
        "feature_rows_emitted": final.rows_emitted,
        "feature_rows_committed_by_writer": final.rows_committed,
        "writer_rows_written": final.writer_rows,
        "steady_window_s": [at(a), at(b)],
        "steady_events_per_s": _rate(a, b, "consumed"),
        "steady_events_per_s_per_interval": _percentiles(per_interval),
        "steady_cf_updates_per_s": _rate(a, b, "cf_updates"),
        "steady_rows_emitted_per_s": _rate(a, b, "rows_emitted"),
        "steady_rows_applied_per_s": _rate(a, b, "rows_committed"),
    }
    if (feed := windows.get("item_factor_feed_records")) is not None and final.consumed:
        out["item_factor_feed_records"] = feed
        out["item_factor_feed_records_per_event"] = round(feed / final.consumed, 3)
    if first is not None and done is not None and done.t > first.t:
        out["overall_events_per_s"] = round(n / (done.t - first.t), 1)
    if first is not None and drained is not None and drained.t > first.t:
        out["end_to_end_events_per_s"] = round(n / (drained.t - first.t), 1)
        out["drain_after_first_event_s"] = round(drained.t - first.t, 1)
    if done is not None and drained is not None:
        out["writer_tail_after_last_event_s"] = round(drained.t - done.t, 1)
    if first is not None and cf_done is not None and cf_done.t > first.t:
        out["overall_cf_updates_per_s"] = round(final.cf_updates / (cf_done.t - first.t), 1)
    return out


def verify_store(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every user's ``events_total`` and ``last_seen_ms`` as serving reads them."""
    from serving.online_features import StoreUnavailable, UserFeatureReader

    expected_count: Counter[str] = Counter()
    expected_last: dict[str, int] = {}
    # A user inactive for privacy.retention_days (event time) starts from nothing: the
    # backlog is in time order, so a gap that long between two of a user's events resets
    # the count (MovieLens spans months).
    retention_ms = settings.privacy.retention_days * 86_400_000
    for e in events:
        user = str(e["user_id"])
        t = int(e["event_time"])
        last = expected_last.get(user)
        if retention_ms and last is not None and t - last >= retention_ms:
            expected_count[user] = 0
        expected_count[user] += 1
        expected_last[user] = max(last or 0, t)
    from personalization.privacy import pseudonymizer

    # The job stores pseudonyms when a secret is set (identity otherwise).
    pseudonym = pseudonymizer(settings.privacy.hmac_secret)
    reader = UserFeatureReader(settings)
    rows = matched = events_total = cf_vectors = 0
    mismatched: list[dict[str, Any]] = []
    try:
        for user in expected_count:
            features = None
            for attempt in range(5):
                try:
                    features = reader.read(pseudonym(user))
                    break
                except StoreUnavailable:
                    time.sleep(0.05 * (attempt + 1))
            if features is None:
                continue
            rows += 1
            events_total += features.events_total
            cf_vectors += bool(getattr(features, "cf_vector", None))
            if (
                features.events_total == expected_count[user]
                and features.last_seen_ms == expected_last[user]
            ):
                matched += 1
            elif len(mismatched) < 10:  # which users, for the report: a lead to the cause
                mismatched.append(
                    {
                        "user": user,
                        "events_total": [features.events_total, expected_count[user]],
                        "last_seen_ms": [features.last_seen_ms, expected_last[user]],
                    }
                )
    finally:
        reader.close()
    return {
        "users_expected": len(expected_count),
        "users_with_row": rows,
        "users_exact": matched,
        "users_with_cf_vector": cf_vectors,
        "events_total_in_store": events_total,
        "events_expected": sum(expected_count.values()),
        "mismatched": mismatched,
        "ok": matched == len(expected_count) and events_total == sum(expected_count.values()),
    }


# --- the in-process profile -------------------------------------------------------------

# The job's own per-record code (flink_jobs/steps.py), run by flink_jobs/local.py with
# keyed state and records pickled as Flink's PICKLED_BYTE_ARRAY state and exchanges do.
