"""A user's online features in one Redis round trip, without the Feast SDK.

Feast keeps one Redis hash per entity key with one field per ``view:feature`` (murmur3)
plus ``_ts:<view>``, the row's event timestamp as a ``google.protobuf.Timestamp``.
``personalization.feature_store`` reproduces that layout, so one HMGET of every field of
``user_profile`` returns what ``FeatureStore.get_online_features`` would, in a fraction
of the time (see ARCHITECTURE.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.names import USER_CF, USER_PROFILE
from personalization.feature_store import (
    decode_fields,
    feature_kinds,
    field_key,
    redis_key,
    ts_field,
)
from personalization.redis_client import REDIS_ERRORS
from personalization.redis_client import redis_client as shared_redis_client
from personalization.settings import Settings
from serving import metrics as serving_metrics
from serving.circuit_breaker import CircuitBreaker

VIEW = USER_PROFILE
CF_VIEW = USER_CF
COUNT_FEATURES = tuple(
    f"{kind}_{window}"
    for kind in ("product_view", "add_to_cart", "purchase")
    for window in ("5m", "1h", "24h")
)


class StoreUnavailable(RuntimeError):
    """The online store (Redis) did not answer in time or refused the connection."""


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """The ``user_profile`` row of one user, decoded into Python values."""

    user_id: str
    counts: dict[str, int] = field(default_factory=dict)
    # (category, decayed score), highest first, as of ``interest_ref_ms``.
    interests: list[tuple[str, float]] = field(default_factory=list)
    interest_ref_ms: int = 0
    recent_items: list[str] = field(default_factory=list)
    cart_items: list[str] = field(default_factory=list)
    purchased_items: list[str] = field(default_factory=list)
    session_count: int = 0
    session_events: int = 0
    session_duration_s: int = 0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    last_purchase_ms: int = 0  # 0 = never purchased
    frequency: int = 0
    monetary: float = 0.0
    events_total: int = 0
    segments: list[str] = field(default_factory=list)
    device: str = ""
    country: str = ""
    age_band: str = ""
    gender: str = ""
    # Event time of the row (Feast's ``_ts`` field) and its age when it was read.
    row_ts_ms: int = 0
    features_age_ms: int = -1
    # Collaborative-filtering factors of the user (empty when the model has none yet).
    cf_vector: list[float] = field(default_factory=list)
    # "granted" (default), "denied" (opted out) or "erased" (forgotten): see privacy.py.
    consent: str = "granted"
    # What Recommend showed the user within features.impression_window_s:
    # item / category -> (times shown, last shown ms). See flink_jobs/impressions.py.
    item_impressions: dict[str, tuple[int, int]] = field(default_factory=dict)
    category_impressions: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Learned segment (flink_jobs/clustering.py): cluster id (-1 = none yet), distance.
    cluster_id: int = -1
    cluster_distance: float = 0.0
    # When the user is active (UTC): busiest hour of the day (-1 = none), weekend share.
    peak_hour: int = -1
    weekend_share: float = 0.0

    @property
    def may_personalize(self) -> bool:
        return self.consent not in ("denied", "erased")

    def recency_days(self, now_ms: int) -> float:
        """Days since the last purchase; -1 if the user never purchased."""
        if self.last_purchase_ms <= 0:
            return -1.0
        return max(0.0, (now_ms - self.last_purchase_ms) / 86_400_000)


def features_from_row(
    user_id: str, row: dict[str, Any], ts_raw: bytes | None, now_ms: int
) -> UserFeatures:
    """Build :class:`UserFeatures` from a decoded feature dict and the raw ``_ts`` value."""
    row_ts_ms = 0
    if ts_raw:
        ts = Timestamp()
        ts.ParseFromString(ts_raw)
        row_ts_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    categories = row.get("interest_categories") or []
    scores = row.get("interest_scores") or []
    return UserFeatures(
        user_id=user_id,
        counts={name: int(row.get(name) or 0) for name in COUNT_FEATURES},
        interests=[(str(c), float(s)) for c, s in zip(categories, scores, strict=False)],
        interest_ref_ms=int(row.get("interest_ref_ms") or 0),
        recent_items=list(row.get("recent_items") or []),
        cart_items=list(row.get("cart_items") or []),
        purchased_items=list(row.get("purchased_items") or []),
        session_count=int(row.get("session_count") or 0),
        session_events=int(row.get("session_events") or 0),
        session_duration_s=int(row.get("session_duration_s") or 0),
        first_seen_ms=int(row.get("first_seen_ms") or 0),
        last_seen_ms=int(row.get("last_seen_ms") or 0),
        last_purchase_ms=int(row.get("last_purchase_ms") or 0),
        frequency=int(row.get("frequency") or 0),
        monetary=float(row.get("monetary") or 0.0),
        events_total=int(row.get("events_total") or 0),
        segments=list(row.get("segments") or []),
        device=str(row.get("last_device") or ""),
        country=str(row.get("last_country") or ""),
        age_band=str(row.get("age_band") or ""),
        gender=str(row.get("gender") or ""),
        row_ts_ms=row_ts_ms,
        features_age_ms=max(0, now_ms - row_ts_ms) if row_ts_ms else -1,
        cf_vector=[float(x) for x in row.get("cf_vector") or []],
        consent=str(row.get("consent") or "granted"),
        item_impressions=_impressions(row, "impressed_items", "impressed_item"),
        category_impressions=_impressions(row, "impressed_categories", "impressed_category"),
        cluster_id=int(row["cluster_id"]) if row.get("cluster_id") is not None else -1,
        cluster_distance=float(row.get("cluster_distance") or 0.0),
        peak_hour=int(row["peak_hour"]) if row.get("peak_hour") is not None else -1,
        weekend_share=float(row.get("weekend_share") or 0.0),
    )


def _impressions(row: dict[str, Any], keys_name: str, prefix: str) -> dict[str, tuple[int, int]]:
    keys = row.get(keys_name) or []
    counts = row.get(f"{prefix}_counts") or []
    last = row.get(f"{prefix}_last_ms") or []
    return {
        str(key): (int(n), int(t)) for key, n, t in zip(keys, counts, last, strict=False) if n > 0
    }


def redis_client(settings: Settings) -> redis.Redis:
    """A pooled client whose timeouts make a dead Redis fail fast instead of hanging."""
    return shared_redis_client(settings.redis)


class UserFeatureReader:
    """Reads one user's ``user_profile`` row with a single HMGET."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._project = settings.feast.project
        self._breaker = CircuitBreaker(
            settings.serving.store_breaker_failures, settings.serving.store_breaker_open_s
        )
        self._client = client if client is not None else redis_client(settings)
        self._names = tuple(feature_kinds(VIEW))
        self._fields = [field_key(VIEW, name) for name in self._names]
        # CF factors (view user_cf) share the user's Redis hash: still one HMGET.
        self._fields.append(field_key(CF_VIEW, "cf_vector"))
        self._fields.append(ts_field(VIEW))

    @property
    def client(self) -> redis.Redis:
        return self._client

    def read(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        """The user's features, None for a user the store has no row for.

        Raises :class:`StoreUnavailable` when Redis cannot be reached in time.
        """
        if not self._breaker.allow():
            serving_metrics.STORE_READS_SKIPPED.inc()
            raise StoreUnavailable(
                f"online store unavailable (not retried yet): {self._breaker.last_error}"
            )
        key = redis_key(self._project, VIEW, user_id)
        try:
            # execute_command: redis-py's typed hmget() rejects bytes keys (Feast's are bytes).
            values: list[bytes | None] = self._client.execute_command("HMGET", key, *self._fields)
        except REDIS_ERRORS as exc:  # refused, timed out, LOADING, READONLY, CLUSTERDOWN ...
            self._breaker.failed(str(exc))
            raise StoreUnavailable(f"online store unavailable: {exc}") from exc
        self._breaker.succeeded()
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        ts_raw = values[-1]
        if ts_raw is None and all(v is None for v in values):
            return None
        row = decode_fields(VIEW, self._names, values[:-2])
        row.update(decode_fields(CF_VIEW, ("cf_vector",), values[-2:-1]))
        return features_from_row(user_id, row, ts_raw, now_ms)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except REDIS_ERRORS:
            return False

    def close(self) -> None:
        self._client.close()
