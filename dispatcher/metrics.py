"""Prometheus metrics of the dispatcher (default registry, ``dispatcher.metrics_port``).

Names (all prefixed ``pz_dispatcher_``)::

    delivered_total{endpoint}              triggers a webhook acknowledged with a 2xx
    retries_total{endpoint}                attempts after the first (each retry once)
    failed_total{endpoint}                 triggers dead-lettered after their attempts
    delivery_latency_seconds{endpoint}     trigger appended to its topic -> 2xx received
    invalid_triggers_total                 records of the triggers topic that are not
                                           triggers (dead-lettered as invalid_trigger)
    identity_fallbacks_total               raw id wanted but the directory was unreadable:
                                           the pseudonym was delivered
    subscribers                            Triggers.Subscribe streams open
    streamed_total                         messages sent to subscribers
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

# Importing the shared module first keeps values in process memory (see its top).
from personalization import metrics as _shared

__all__ = ["LATENCY_BUCKETS", "DispatcherMetrics", "dispatcher_metrics"]

# From a few milliseconds (a live endpoint) to minutes (retries with backoff).
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


@dataclass(frozen=True)
class DispatcherMetrics:
    delivered: Counter
    retries: Counter
    failed: Counter
    latency: Histogram
    invalid: Counter
    identity_fallbacks: Counter
    subscribers: Gauge
    streamed: Counter


@cache
def dispatcher_metrics() -> DispatcherMetrics:
    assert _shared is not None
    return DispatcherMetrics(
        delivered=Counter(
            "pz_dispatcher_delivered", "Triggers acknowledged by a webhook (2xx)", ["endpoint"]
        ),
        retries=Counter("pz_dispatcher_retries", "Webhook attempts after the first", ["endpoint"]),
        failed=Counter(
            "pz_dispatcher_failed", "Triggers dead-lettered after failed attempts", ["endpoint"]
        ),
        latency=Histogram(
            "pz_dispatcher_delivery_latency_seconds",
            "Trigger appended to its topic until a webhook acknowledged it",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        invalid=Counter("pz_dispatcher_invalid_triggers", "Records that are not triggers"),
        identity_fallbacks=Counter(
            "pz_dispatcher_identity_fallbacks",
            "Raw ids not resolvable (directory unreadable): the pseudonym was delivered",
        ),
        subscribers=Gauge("pz_dispatcher_subscribers", "Triggers.Subscribe streams open"),
        streamed=Counter("pz_dispatcher_streamed", "Trigger messages sent to subscribers"),
    )
