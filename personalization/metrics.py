"""Prometheus metrics of the job, the online-store writer and the models (prometheus-client).

Each process exposes the default registry on its own port (``settings.metrics``):

- the Flink job (``job_port``), from inside the Python operators. In ``thread``
  execution mode every Python operator of a TaskManager / MiniCluster runs in one
  embedded CPython, so one module-level registry and one HTTP server per process is
  right; :func:`start_metrics_server` is idempotent per process and tolerates a port
  already taken (another TaskManager on the same host: it logs and carries on);
- the online-store writer (``writer_port``);
- serving (``serving_port``, see ``serving/metrics.py``).

The metric families of a role are created on first use (:func:`job_metrics`,
:func:`writer_metrics`, :func:`model_metrics`, :func:`experiment_metrics`), so an
endpoint exposes only the families of the role that runs in its process.

Names (all prefixed ``pz_``)::

    job     pz_job_events_total{family,event_type}      accepted events (family =
                                                        clickstream|purchase|engagement|control)
            pz_job_dead_letters_total{reason}           events sent to the DLQ
            pz_job_triggers_total{trigger}              behavioural triggers fired
            pz_job_duplicates_dropped_total             redelivered events dropped (dedup)
            pz_job_opted_out_ignored_total              events of opted-out users ignored
            pz_job_watermark_ms                         last event-time watermark seen
            pz_job_watermark_lag_seconds                wall clock - that watermark (at scrape)
    writer  pz_writer_rows_written_total{view}          rows written to the online store
            pz_writer_batches_total                     batches written and committed
            pz_writer_write_errors_total                failed write attempts (retried)
            pz_writer_bad_records_total                 undecodable feature updates
            pz_writer_feature_freshness_seconds{view}   wall clock - row version time, at write
            pz_writer_batch_seconds                     time to write one batch
            pz_writer_consumer_lag{partition}           feature_updates messages not consumed yet
            pz_writer_last_write_timestamp_seconds
    models  pz_model_prequential{model,metric}          hook: prequential metrics (learning)
            pz_model_drift{model,detector}              hook: drift statistic / alarm state
            pz_model_drift_alarms_total{model,detector} hook: drift alarms raised
            pz_model_version{model,version}             hook: 1 for the version in use
            pz_model_updates_total{model}               learning updates (cf: one per
                                                        learned interaction)
    A/B     pz_experiment_exposures_total{experiment,variant}
            pz_experiment_actions_total{experiment,variant,action}   click|add_to_cart|purchase
            pz_experiment_revenue_total{experiment,variant}

The model and experiment families are hooks: nothing in this module sets them; the
learning and experiment code calls :func:`model_metrics` / :func:`experiment_metrics`
and sets real values. Until then the dashboard shows "no data yet" for them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client import values as _values

log = logging.getLogger(__name__)

# Importing feast (``feast.metrics``, pulled in by feast itself) sets
# PROMETHEUS_MULTIPROC_DIR for Feast's pre-forking feature server, which switches
# prometheus-client to file-backed (mmap) values in any process that imported feast
# first: the writer, for one. Each of our processes exports its own registry, so
# values stay in memory: metrics created from here on (ours are created lazily or
# after this import) use the plain in-process value class.
_values.ValueClass = _values.MutexValue

# Wall clock - row version time at write: from milliseconds (live traffic) to hours
# (replays, catch-up after an outage).
FRESHNESS_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
    3600.0,
)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# --- HTTP endpoint --------------------------------------------------------------------

_server_lock = threading.Lock()
_servers: dict[tuple[str, int], Any] = {}


def start_metrics_server(host: str, port: int, *, what: str = "metrics") -> bool:
    """Serve the default registry on ``http://host:port/metrics``, once per process.

    Returns True if this process serves (now or already) on that address. A port of 0
    means "disabled"; an address in use is logged, not raised: metrics must never stop
    the job, the writer or serving.
    """
    if port <= 0:
        return False
    key = (host, port)
    with _server_lock:
        if key in _servers:
            return True
        try:
            _servers[key] = start_http_server(port, addr=host)
        except OSError as exc:
            log.warning("%s endpoint %s:%d not started: %s", what, host, port, exc)
            return False
    log.info("%s endpoint on http://%s:%d/metrics", what, host, port)
    return True


# --- job -------------------------------------------------------------------------------

# Set by the local standalone cluster (ops/infra/flink_cluster.py) in each TaskManager's
# environment: its index, so each TaskManager's interpreter serves job metrics on a port
# of its own (MetricsSettings.taskmanager_job_port) instead of all but one failing to
# bind ``job_port``.
TASKMANAGER_INDEX_ENV = "PZ_TASKMANAGER_INDEX"


def job_metrics_port(cfg: Any) -> int:
    """The job-metrics port of this process (``cfg``: MetricsSettings)."""
    raw = os.environ.get(TASKMANAGER_INDEX_ENV, "0")
    index = int(raw) if raw.isdigit() else 0
    return int(cfg.taskmanager_job_port(index))


class _Watermark:
    """The last watermark an operator saw; the lag is computed when scraped, so it keeps
    growing while the stream is stalled instead of freezing at its last value."""

    def __init__(self) -> None:
        self.ms: int | None = None

    def lag_s(self) -> float:
        if self.ms is None:
            return float("nan")
        return time.time() - self.ms / 1000.0

    def value_ms(self) -> float:
        return float("nan") if self.ms is None else float(self.ms)


@dataclass(frozen=True)
class JobMetrics:
    events: Counter
    dead_letters: Counter
    triggers: Counter
    duplicates: Counter
    opted_out: Counter
    impressions: Counter
    expired_users: Counter
    watermark: _Watermark

    def observe_watermark(self, watermark_ms: int) -> None:
        # Before the first watermark Flink reports Long.MIN_VALUE.
        if watermark_ms > 0:
            self.watermark.ms = watermark_ms


_lock = threading.Lock()
_job: JobMetrics | None = None
_writer: WriterMetrics | None = None
_model: ModelMetrics | None = None
_experiment: ExperimentMetrics | None = None


def job_metrics() -> JobMetrics:
    global _job
    with _lock:
        if _job is None:
            watermark = _Watermark()
            Gauge(
                "pz_job_watermark_lag_seconds",
                "Wall clock minus the current event-time watermark of the user operator",
            ).set_function(watermark.lag_s)
            Gauge(
                "pz_job_watermark_ms", "Current event-time watermark of the user operator (ms)"
            ).set_function(watermark.value_ms)
            _job = JobMetrics(
                events=Counter(
                    "pz_job_events",
                    "Accepted behaviour events by topic family and event type",
                    ["family", "event_type"],
                ),
                dead_letters=Counter(
                    "pz_job_dead_letters", "Events sent to the dead-letter topic", ["reason"]
                ),
                triggers=Counter("pz_job_triggers", "Behavioural triggers fired", ["trigger"]),
                duplicates=Counter(
                    "pz_job_duplicates_dropped", "Redelivered events dropped by the dedup"
                ),
                opted_out=Counter("pz_job_opted_out_ignored", "Events of opted-out users, ignored"),
                impressions=Counter(
                    "pz_job_impressions",
                    "Recommend answers counted in user state (frequency capping, fatigue)",
                ),
                expired_users=Counter(
                    "pz_job_users_expired",
                    "Users forgotten after privacy.retention_days without activity",
                ),
                watermark=watermark,
            )
        return _job


# --- writer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterMetrics:
    rows_written: Counter
    batches: Counter
    write_errors: Counter
    bad_records: Counter
    freshness: Histogram
    batch_seconds: Histogram
    consumer_lag: Gauge
    last_write: Gauge


def writer_metrics() -> WriterMetrics:
    global _writer
    with _lock:
        if _writer is None:
            _writer = WriterMetrics(
                rows_written=Counter(
                    "pz_writer_rows_written", "Feature rows written to the online store", ["view"]
                ),
                batches=Counter("pz_writer_batches", "Batches written and committed"),
                write_errors=Counter(
                    "pz_writer_write_errors", "Failed online-store writes (retried)"
                ),
                bad_records=Counter("pz_writer_bad_records", "Undecodable feature updates"),
                freshness=Histogram(
                    "pz_writer_feature_freshness_seconds",
                    "Wall clock minus the row's version time when the row is written",
                    ["view"],
                    buckets=FRESHNESS_BUCKETS,
                ),
                batch_seconds=Histogram(
                    "pz_writer_batch_seconds",
                    "Time to write one batch to the online store",
                    buckets=BATCH_BUCKETS,
                ),
                consumer_lag=Gauge(
                    "pz_writer_consumer_lag",
                    "feature_updates messages not yet consumed by the writer",
                    ["partition"],
                ),
                last_write=Gauge(
                    "pz_writer_last_write_timestamp_seconds", "Wall clock of the last write"
                ),
            )
        return _writer


# --- models (hook) ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetrics:
    """Set by the learning code; nothing here invents values."""

    prequential: Gauge
    drift: Gauge
    drift_alarms: Counter
    version: Gauge
    updates: Counter

    def set_prequential(self, model: str, metric: str, value: float) -> None:
        """A prequential (test-then-train) metric, e.g. ``metric="recall@10"``."""
        self.prequential.labels(model, metric).set(value)

    def set_drift(self, model: str, detector: str, value: float, *, alarm: bool) -> None:
        """A drift detector's statistic; ``alarm`` counts a newly raised alarm."""
        self.drift.labels(model, detector).set(value)
        if alarm:
            self.drift_alarms.labels(model, detector).inc()

    def set_version(self, model: str, version: str) -> None:
        """The version in use: 1 for it, the model's other versions removed."""
        with _lock:
            previous = _model_versions.get(model)
            if previous is not None and previous != version:
                with warnings.catch_warnings():
                    # The multiprocess warning is about feast's env var (see the top).
                    warnings.simplefilter("ignore", UserWarning)
                    self.version.remove(model, previous)
            _model_versions[model] = version
            self.version.labels(model, version).set(1)


_model_versions: dict[str, str] = {}


def model_metrics() -> ModelMetrics:
    global _model
    with _lock:
        if _model is None:
            _model = ModelMetrics(
                prequential=Gauge(
                    "pz_model_prequential",
                    "Prequential (test-then-train) metric of an online model",
                    ["model", "metric"],
                ),
                drift=Gauge("pz_model_drift", "Drift detector statistic", ["model", "detector"]),
                drift_alarms=Counter(
                    "pz_model_drift_alarms", "Drift alarms raised", ["model", "detector"]
                ),
                version=Gauge(
                    "pz_model_version", "1 for the model version in use", ["model", "version"]
                ),
                updates=Counter(
                    "pz_model_updates", "Learning updates applied by an online model", ["model"]
                ),
            )
        return _model


# --- experiments (hook) ----------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentMetrics:
    """Set by the A/B code (exposures at serving, joined actions in the job)."""

    exposures: Counter
    actions: Counter
    revenue: Counter


def experiment_metrics() -> ExperimentMetrics:
    global _experiment
    with _lock:
        if _experiment is None:
            _experiment = ExperimentMetrics(
                exposures=Counter(
                    "pz_experiment_exposures",
                    "Recommendations served per experiment variant",
                    ["experiment", "variant"],
                ),
                actions=Counter(
                    "pz_experiment_actions",
                    "Actions joined to a served recommendation",
                    ["experiment", "variant", "action"],
                ),
                revenue=Counter(
                    "pz_experiment_revenue",
                    "Revenue of purchases joined to a served recommendation",
                    ["experiment", "variant"],
                ),
            )
        return _experiment
