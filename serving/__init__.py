"""gRPC serving: recommendations, user profiles and event collection."""

# The modules, one concept each (``from serving import *`` imports them all; importing
# the package alone stays cheap for clients that only need ``serving.client``).
__all__ = [
    "admin",
    "app",
    "async_handlers",
    "audit",
    "auth",
    "candidates",
    "catalog",
    "catalog_snapshot",
    "circuit_breaker",
    "client",
    "codec",
    "collector",
    "exposure_log",
    "fatigue",
    "health",
    "metrics",
    "online_features",
    "propensity",
    "proto_mapping",
    "ranking",
    "ranking_types",
    "recommender",
    "rules",
    "selection",
    "server",
    "servicers",
    "strategies",
]
