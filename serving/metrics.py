"""Prometheus metrics of the gRPC server (prometheus-client, default registry).

    pz_serving_rpc_duration_seconds{service,method}   latency of unary RPCs (server side)
    pz_serving_rpc_errors_total{service,method,code}  RPCs that ended with a non-OK status
    pz_serving_fallbacks_total{reason}                Recommend answers with a fallback_reason
    pz_serving_store_reads_skipped_total              user reads not sent to a Redis that kept
                                                      failing (circuit breaker open)
    pz_serving_catalog_refreshes_total{outcome}       catalog refreshes seen by the health
                                                      monitor (ok | error)
    pz_serving_catalog_items                          items in the in-process catalog
    pz_serving_catalog_age_seconds                    wall clock - last successful refresh
    pz_serving_catalog_consecutive_failures
    pz_serving_worker{worker,pid}                     1 in each of several serving processes
                                                      (``--workers N``: one endpoint each)

Latency and errors are recorded around every unary call by ``serving/async_handlers.py``
(``RPC_DURATION``, :func:`count_error`, :func:`count_response`), the catalog figures
from ``ItemCatalog.health()`` when scraped. ``serve()`` exposes them on
``settings.metrics.serving_port``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Imported first: it keeps prometheus-client's values in memory even after feast set
# its multiprocess directory (see personalization/metrics.py).
from personalization import metrics as _shared  # noqa: F401
from personalization.v1 import recommender_pb2

# Fine-grained below 10 ms, where a healthy Recommend lives (p50 ~1 ms, p99 a few ms).
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.00125,
    0.0015,
    0.00175,
    0.002,
    0.0025,
    0.003,
    0.0035,
    0.004,
    0.005,
    0.006,
    0.007,
    0.008,
    0.009,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

RPC_DURATION = Histogram(
    "pz_serving_rpc_duration_seconds",
    "Server-side latency of unary RPCs",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_ERRORS = Counter(
    "pz_serving_rpc_errors", "RPCs that ended with a non-OK status", ["service", "method", "code"]
)
FALLBACKS = Counter(
    "pz_serving_fallbacks", "Recommend answers served by a fallback, by reason", ["reason"]
)
STORE_READS_SKIPPED = Counter(
    "pz_serving_store_reads_skipped",
    "Request-path Redis reads not attempted while the circuit breaker was open",
)
# Set by each of several serving processes (serving/workers.py): which one answers here.
WORKER = Gauge(
    "pz_serving_worker",
    "1 for the serving worker behind this endpoint: its index and pid",
    ["worker", "pid"],
)
CATALOG_REFRESHES = Counter(
    "pz_serving_catalog_refreshes",
    "Catalog refresh attempts observed by the health monitor",
    ["outcome"],
)


def count_error(service: str, method: str, code: grpc.StatusCode) -> None:
    """One RPC that ended with a non-OK status."""
    RPC_ERRORS.labels(service, method, code.name).inc()


_FALLBACK_CHILDREN: dict[str, Any] = {}


def count_response(response: Any) -> None:
    """Counts a Recommend answer served by a fallback, by reason."""
    if isinstance(response, recommender_pb2.RecommendResponse) and response.fallback_reason:
        reason = response.fallback_reason
        # labels() takes a lock and builds a key per call; reasons are a handful.
        child = _FALLBACK_CHILDREN.get(reason)
        if child is None:
            child = _FALLBACK_CHILDREN[reason] = FALLBACKS.labels(reason)
        child.inc()


class CatalogCollector(Collector):
    """Catalog size, age and failures from the watched catalog's ``health()``."""

    def __init__(self) -> None:
        self._catalog: Any = None
        self._lock = threading.Lock()
        self._last_attempt_ms = 0
        self._last_success_ms = 0

    def watch(self, catalog: Any) -> None:
        with self._lock:
            self._catalog = catalog
            self._last_attempt_ms = self._last_success_ms = 0

    def unwatch(self, catalog: Any) -> None:
        with self._lock:
            if self._catalog is catalog:
                self._catalog = None

    def observe_refreshes(self) -> None:
        """Count refreshes since the previous call (the health monitor calls this)."""
        with self._lock:
            catalog = self._catalog
            if catalog is None:
                return
            health = catalog.health()
            if health.last_attempt_ms and health.last_attempt_ms != self._last_attempt_ms:
                ok = health.last_success_ms == health.last_attempt_ms
                CATALOG_REFRESHES.labels("ok" if ok else "error").inc()
            self._last_attempt_ms = health.last_attempt_ms
            self._last_success_ms = health.last_success_ms

    def collect(self) -> Iterator[GaugeMetricFamily]:
        catalog = self._catalog
        if catalog is None:
            return
        health = catalog.health()
        yield GaugeMetricFamily(
            "pz_serving_catalog_items", "Items in the in-process catalog", value=health.size
        )
        age = (
            time.time() - health.last_success_ms / 1000 if health.last_success_ms else float("nan")
        )
        yield GaugeMetricFamily(
            "pz_serving_catalog_age_seconds",
            "Wall clock minus the last successful catalog refresh",
            value=age,
        )
        yield GaugeMetricFamily(
            "pz_serving_catalog_consecutive_failures",
            "Catalog refreshes failed in a row",
            value=health.consecutive_failures,
        )


CATALOG = CatalogCollector()
REGISTRY.register(CATALOG)
