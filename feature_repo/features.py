"""Feature definitions: what the streaming job computes and the recommender reads.

Each object below is registered by ``feast apply`` (or ``personalize feast-apply``).
The Flink job renders rows with exactly these feature names
(``flink_jobs/profile.py:user_feature_row`` and ``flink_jobs/items.py:item_feature_row``)
and the online-store writer converts them with the dtypes declared here, so this file
is the single source of truth for names and types.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

from feature_repo.names import (
    ENTITY_OF_VIEW,
    ITEM_CATALOG,
    ITEM_CF,
    ITEM_STATS,
    USER_CF,
    USER_PROFILE,
)

_DATA_DIR = Path(__file__).resolve().parent / "data"
# The feature history the online-store writer appends to (personalization/offline_store.py):
# Settings.history_path, handed over as PZ_HISTORY_DIR by Settings.feast_env() (``feast
# apply`` stores these paths in the registry; get_historical_features reads them there).
_HISTORY_DIR = Path(
    os.environ.get("PZ_HISTORY_DIR") or Path(__file__).resolve().parent.parent / ".run" / "history"
)

# A shopper or viewer. Ids may be pseudonymised (HMAC) before they reach the store.
user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="An end user of the shop or media site.",
)

# A product, article or movie that can be recommended.
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A recommendable item.",
)

# Offline copies (for training / point-in-time joins): the feature history, one folder
# per view of parquet files partitioned by date. The streaming path never reads them.
user_profile_batch = FileSource(
    name="user_profile_batch",
    path=str(_HISTORY_DIR / USER_PROFILE),
    timestamp_field="event_timestamp",
)
item_stats_batch = FileSource(
    name="item_stats_batch",
    path=str(_HISTORY_DIR / ITEM_STATS),
    timestamp_field="event_timestamp",
)

# Push sources: the streaming job's rows enter the online store through these.
user_profile_push = PushSource(name="user_profile_push", batch_source=user_profile_batch)
item_stats_push = PushSource(name="item_stats_push", batch_source=item_stats_batch)

# Counters over sliding windows, as of the user's last event (event time).
_WINDOW_COUNTS = [
    Field(name=f"{kind}_{window}", dtype=Int64, description=f"{kind} events in the last {window}")
    for kind in ("product_view", "add_to_cart", "purchase")
    for window in ("5m", "1h", "24h")
]

# The user's behaviour, context and demographics, updated on every event.
user_profile = FeatureView(
    name=USER_PROFILE,
    entities=[user],
    # Feast does not filter online reads by ttl; serving checks freshness itself.
    ttl=timedelta(days=30),
    schema=[
        *_WINDOW_COUNTS,
        Field(name="session_count", dtype=Int64, description="sessions so far (30 min gap)"),
        Field(name="session_events", dtype=Int64, description="events in the current session"),
        Field(name="session_duration_s", dtype=Int64, description="current session length"),
        Field(name="interest_categories", dtype=Array(String), description="by decayed score"),
        Field(name="interest_scores", dtype=Array(Float64), description="decayed interest"),
        Field(name="interest_ref_ms", dtype=Int64, description="time the scores refer to"),
        Field(
            name="recent_items",
            dtype=Array(String),
            description="last viewed, clicked or rated, newest first",
        ),
        Field(name="cart_items", dtype=Array(String), description="current cart"),
        Field(name="purchased_items", dtype=Array(String), description="bought, newest first"),
        Field(name="first_seen_ms", dtype=Int64),
        Field(name="last_seen_ms", dtype=Int64),
        Field(name="last_purchase_ms", dtype=Int64, description="recency anchor (0 = never)"),
        Field(name="frequency", dtype=Int64, description="number of purchases"),
        Field(name="monetary", dtype=Float64, description="total spent"),
        Field(name="events_total", dtype=Int64),
        Field(name="segments", dtype=Array(String), description="rule-based segments"),
        # Streaming clustering of the user's interests + RFM (flink_jobs/clustering.py).
        Field(name="cluster_id", dtype=Int64, description="learned segment, -1 = none yet"),
        Field(name="cluster_distance", dtype=Float64, description="distance to its centroid"),
        # When the user is active (UTC; flink_jobs/profile.py).
        Field(name="peak_hour", dtype=Int64, description="busiest hour of day, -1 = none"),
        Field(name="weekend_share", dtype=Float64, description="share of events on weekends"),
        Field(name="last_device", dtype=String),
        Field(name="last_country", dtype=String),
        Field(name="age_band", dtype=String),
        Field(name="gender", dtype=String),
        Field(name="consent", dtype=String, description="granted | denied | erased"),
        # Impressions within features.impression_window_s (frequency capping, fatigue).
        Field(name="impressed_items", dtype=Array(String), description="shown, newest first"),
        Field(name="impressed_item_counts", dtype=Array(Int64), description="times shown"),
        Field(name="impressed_item_last_ms", dtype=Array(Int64), description="last shown"),
        Field(name="impressed_categories", dtype=Array(String), description="shown categories"),
        Field(name="impressed_category_counts", dtype=Array(Int64)),
        Field(name="impressed_category_last_ms", dtype=Array(Int64)),
    ],
    source=user_profile_push,
    online=True,
    description="Per-user features computed by flink_jobs/user_features_job.py.",
)

# Popularity of each item over windows and a decayed trending score.
item_stats = FeatureView(
    name=ITEM_STATS,
    entities=[item],
    ttl=timedelta(days=30),
    schema=[
        Field(name="category", dtype=String),
        Field(name="price", dtype=Float64),
        Field(name="trending_score", dtype=Float64, description="decayed weighted events"),
        Field(name="trending_ref_ms", dtype=Int64, description="time the score refers to"),
        Field(name="last_event_ms", dtype=Int64),
        Field(name="views_1h", dtype=Int64),
        Field(name="views_24h", dtype=Int64),
        Field(name="carts_1h", dtype=Int64),
        Field(name="carts_24h", dtype=Int64),
        Field(name="purchases_1h", dtype=Int64),
        Field(name="purchases_24h", dtype=Int64),
        Field(name="covisit_items", dtype=Array(String), description="co-visited, strongest first"),
        Field(name="covisit_scores", dtype=Array(Float64), description="decayed pair weights"),
        # Popularity per context value ("c=DE", "d=mobile", "c=DE&d=mobile"; strongest
        # first), decayed like trending_score to trending_ref_ms.
        Field(name="context_keys", dtype=Array(String), description="country / device keys"),
        Field(name="context_scores", dtype=Array(Float64), description="decayed popularity"),
    ],
    source=item_stats_push,
    online=True,
    description="Per-item popularity computed by the item branch of the same job.",
)

# Collaborative-filtering factors, learned online in the job (flink_jobs/learning.py).
# Separate views from user_profile / item_stats so each writer keeps its own row
# version; they share the entity's Redis hash, so serving still reads a user in one
# round trip.
user_cf = FeatureView(
    name=USER_CF,
    entities=[user],
    ttl=timedelta(days=30),
    schema=[Field(name="cf_vector", dtype=Array(Float64), description="user factors")],
    source=PushSource(
        name="user_cf_push",
        batch_source=FileSource(
            name="user_cf_batch",
            path=str(_HISTORY_DIR / USER_CF),
            timestamp_field="event_timestamp",
        ),
    ),
    online=True,
    description="Online matrix-factorisation factors of each user.",
)
item_cf = FeatureView(
    name=ITEM_CF,
    entities=[item],
    ttl=timedelta(days=30),
    schema=[Field(name="cf_vector", dtype=Array(Float64), description="item factors")],
    source=PushSource(
        name="item_cf_push",
        batch_source=FileSource(
            name="item_cf_batch",
            path=str(_HISTORY_DIR / ITEM_CF),
            timestamp_field="event_timestamp",
        ),
    ),
    online=True,
    description="Online matrix-factorisation factors of each item.",
)

# Item metadata from the catalog topic (personalization/catalog_records.py), written by
# the writer's catalog consumer into the item's hash beside item_stats, so serving's
# catalog refresh reads both in one HMGET. A deleted item keeps a tombstone row
# (deleted=1, available=0): a replayed older upsert is not newer and is skipped.
item_catalog = FeatureView(
    name=ITEM_CATALOG,
    entities=[item],
    ttl=timedelta(days=30),
    schema=[
        Field(name="title", dtype=String),
        Field(name="category_path", dtype=Array(String), description="broadest first"),
        Field(name="brand", dtype=String),
        Field(name="list_price", dtype=Float64, description="the catalog's price"),
        Field(name="tags", dtype=Array(String)),
        Field(name="available", dtype=Int64, description="1 = may be sold, 0 = not"),
        Field(name="stock", dtype=Int64, description="units in stock, -1 = not tracked"),
        Field(name="created_ms", dtype=Int64, description="when the item was created"),
        Field(name="updated_ms", dtype=Int64, description="time of the record"),
        Field(name="deleted", dtype=Int64, description="1 = deleted (a tombstone)"),
    ],
    source=PushSource(
        name="item_catalog_push",
        batch_source=FileSource(
            name="item_catalog_batch",
            path=str(_DATA_DIR / "item_catalog.parquet"),
            timestamp_field="event_timestamp",
        ),
    ),
    online=True,
    description="Item metadata: title, category path, brand, price, tags, stock.",
)

# What the recommender reads for a user.
recommender_features = FeatureService(
    name="recommender",
    features=[user_profile, user_cf],
    description="Features the gRPC recommender reads on the request path.",
)

FEATURE_VIEWS = {
    view.name: view for view in (user_profile, item_stats, user_cf, item_cf, item_catalog)
}

__all__ = ["ENTITY_OF_VIEW", "FEATURE_VIEWS"]
