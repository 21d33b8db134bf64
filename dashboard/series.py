"""From scraped Prometheus text to the dashboard's time series (pure, no I/O).

A scrape of every endpoint (job, writer, serving) becomes a :class:`Scrape`; each new
scrape is turned into one flat *point* (``{"t": ..., "events.clickstream": 12.5, ...}``)
by comparing it with an older scrape: counters become rates over ``rate_window_s``,
histograms become percentiles of the observations made within ``quantile_window_s``
(Prometheus' ``histogram_quantile`` over bucket increases). :class:`History` keeps the
last few minutes of points for ``/api/series``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LabelSet = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, LabelSet], float]

JOB = "job"
WRITER = "writer"
SERVING = "serving"
ENDPOINTS = (JOB, WRITER, SERVING)

EVENT_FAMILIES = ("clickstream", "purchase", "engagement")
QUANTILES = (("p50", 0.5), ("p99", 0.99))


# --- parsing and selection -------------------------------------------------------------


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = float(sample.value)
    return samples


def select(samples: Samples, name: str, **match: str) -> Iterator[tuple[dict[str, str], float]]:
    """Samples called ``name`` whose labels include ``match``."""
    for (sample_name, labels), value in samples.items():
        if sample_name != name:
            continue
        as_dict = dict(labels)
        if all(as_dict.get(k) == v for k, v in match.items()):
            yield as_dict, value


def total(samples: Samples, name: str, **match: str) -> float | None:
    """Sum over every matching sample; None if there is none."""
    values = [v for _, v in select(samples, name, **match) if not math.isnan(v)]
    return sum(values) if values else None


def sum_by(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """Matching samples summed per value of ``label``."""
    out: dict[str, float] = {}
    for labels, value in select(samples, name, **match):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


Buckets = list[tuple[float, float]]


def histogram_buckets(samples: Samples, name: str, **match: str) -> Buckets:
    """Cumulative ``(le, count)`` of histogram ``name`` summed over its other labels,
    sorted by ``le`` (the last is ``+Inf``)."""
    counts: dict[float, float] = {}
    for labels, value in select(samples, f"{name}_bucket", **match):
        le = float(labels["le"])
        counts[le] = counts.get(le, 0.0) + value
    return sorted(counts.items())


def counter_increase(now: float, then: float | None) -> float:
    """Increase of a counter; a decrease means the process restarted from zero."""
    if then is None or now < then:
        return now
    return now - then


def bucket_increase(now: Buckets, then: Buckets) -> Buckets:
    """Per-bucket increase between two scrapes of the same histogram (reset-aware)."""
    before = dict(then)
    if any(count < before.get(le, 0.0) for le, count in now):
        return list(now)  # restarted: everything counted since is new
    return [(le, count - before.get(le, 0.0)) for le, count in now]


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of cumulative buckets, interpolated linearly inside the bucket
    that holds it (as Prometheus does). None without observations. A quantile in the
    ``+Inf`` bucket is reported as the largest finite bound."""
    if not buckets or not 0.0 <= q <= 1.0:
        return None
    observed = buckets[-1][1]
    if observed <= 0:
        return None
    rank = q * observed
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(le):
                return lower_bound
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


# --- scrapes and points ----------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One round of scrapes: ``endpoints[name]`` is None when the endpoint did not answer."""

    t: float
    endpoints: Mapping[str, Samples | None]

    def samples(self, endpoint: str) -> Samples:
        return self.endpoints.get(endpoint) or {}

    def all_samples(self) -> Iterator[Samples]:
        for samples in self.endpoints.values():
            if samples:
                yield samples


def _finite(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def _rate(now: Samples, then: Samples | None, name: str, dt: float, **match: str) -> float | None:
    current = total(now, name, **match)
    if current is None or then is None or dt <= 0:
        return None
    return counter_increase(current, total(then, name, **match)) / dt


def _rates_by(
    now: Samples, then: Samples | None, name: str, label: str, dt: float
) -> dict[str, float]:
    if then is None or dt <= 0:
        return {}
    before = sum_by(then, name, label)
    return {
        key: counter_increase(value, before.get(key)) / dt
        for key, value in sum_by(now, name, label).items()
    }


def _quantiles(
    now: Samples, then: Samples | None, name: str, **match: str
) -> dict[str, float | None]:
    current = histogram_buckets(now, name, **match)
    if not current:
        return {}
    window = bucket_increase(current, histogram_buckets(then, name, **match)) if then else current
    return {label: histogram_quantile(q, window) for label, q in QUANTILES}


def derive_point(current: Scrape, rate_base: Scrape | None, quantile_base: Scrape | None) -> dict:
    """One point of every dashboard series from ``current`` and two older scrapes."""
    point: dict[str, Any] = {"t": round(current.t, 3)}

    def put(key: str, value: float | None) -> None:
        value = _finite(value)
        if value is not None:
            point[key] = round(value, 6)

    for name in ENDPOINTS:
        if name in current.endpoints:
            point[f"up.{name}"] = 0 if current.endpoints[name] is None else 1

    def base(scrape: Scrape | None, endpoint: str) -> Samples | None:
        if scrape is None or scrape.endpoints.get(endpoint) is None:
            return None
        return scrape.samples(endpoint)

    rate_dt = current.t - rate_base.t if rate_base else 0.0

    # Job: events/s per family, DLQ and triggers (cumulative), watermark lag.
    job, job_then = current.samples(JOB), base(rate_base, JOB)
    if job:
        by_family = _rates_by(job, job_then, "pz_job_events_total", "family", rate_dt)
        for family in EVENT_FAMILIES:
            if job_then is not None:
                put(f"events.{family}", by_family.get(family, 0.0))
        if job_then is not None:
            put("events.total", sum(v for k, v in by_family.items() if k in EVENT_FAMILIES))
        for reason, count in sum_by(job, "pz_job_dead_letters_total", "reason").items():
            put(f"dlq.{reason}", count)
        put("dlq.total", total(job, "pz_job_dead_letters_total") or 0.0)
        for trigger, count in sum_by(job, "pz_job_triggers_total", "trigger").items():
            put(f"triggers.{trigger}", count)
        put("triggers.total", total(job, "pz_job_triggers_total") or 0.0)
        put("job.duplicates", total(job, "pz_job_duplicates_dropped_total"))
        put("job.opted_out", total(job, "pz_job_opted_out_ignored_total"))
        put("job.watermark_lag_s", total(job, "pz_job_watermark_lag_seconds"))

    # Writer: freshness percentiles, rows/s, consumer lag.
    writer = current.samples(WRITER)
    if writer:
        fresh = _quantiles(
            writer, base(quantile_base, WRITER), "pz_writer_feature_freshness_seconds"
        )
        for label, value in fresh.items():
            put(f"freshness.{label}", value)
        put(
            "writer.rows_per_s",
            _rate(writer, base(rate_base, WRITER), "pz_writer_rows_written_total", rate_dt),
        )
        put("writer.consumer_lag", total(writer, "pz_writer_consumer_lag"))
        put("writer.write_errors", total(writer, "pz_writer_write_errors_total"))

    # Serving: Recommend latency percentiles and rate, errors/s, fallbacks, catalog.
    serving, serving_then = current.samples(SERVING), base(rate_base, SERVING)
    if serving:
        name = "pz_serving_rpc_duration_seconds"
        for method in ("Recommend", "Collect"):
            lat = _quantiles(serving, base(quantile_base, SERVING), name, method=method)
            for label, value in lat.items():
                put(f"latency.{method}.{label}", value)
            put(
                f"rps.{method}",
                _rate(serving, serving_then, f"{name}_count", rate_dt, method=method),
            )
        put(
            "serving.errors_per_s",
            _rate(serving, serving_then, "pz_serving_rpc_errors_total", rate_dt),
        )
        for reason, count in sum_by(serving, "pz_serving_fallbacks_total", "reason").items():
            put(f"fallbacks.{reason}", count)
        put("catalog.items", total(serving, "pz_serving_catalog_items"))
        put("catalog.age_s", total(serving, "pz_serving_catalog_age_seconds"))

    # Models (hook): prequential metrics from whichever process sets them.
    for samples in current.all_samples():
        for labels, value in select(samples, "pz_model_prequential"):
            put(f"model.{labels.get('model', '')}.{labels.get('metric', '')}", value)
    return point


def experiments(scrape: Scrape) -> dict[str, dict[str, dict[str, float]]]:
    """experiment -> variant -> {exposures, <action>..., revenue} from the A/B counters;
    empty until the experiment code sets them."""
    out: dict[str, dict[str, dict[str, float]]] = {}

    def cell(labels: dict[str, str]) -> dict[str, float]:
        return out.setdefault(labels.get("experiment", ""), {}).setdefault(
            labels.get("variant", ""), {}
        )

    for samples in scrape.all_samples():
        for labels, value in select(samples, "pz_experiment_exposures_total"):
            row = cell(labels)
            row["exposures"] = row.get("exposures", 0.0) + value
        for labels, value in select(samples, "pz_experiment_actions_total"):
            row = cell(labels)
            action = labels.get("action", "")
            row[action] = row.get(action, 0.0) + value
        for labels, value in select(samples, "pz_experiment_revenue_total"):
            row = cell(labels)
            row["revenue"] = row.get("revenue", 0.0) + value
    return out


def model_versions(scrape: Scrape) -> dict[str, str]:
    out: dict[str, str] = {}
    for samples in scrape.all_samples():
        for labels, value in select(samples, "pz_model_version"):
            if value:
                out[labels.get("model", "")] = labels.get("version", "")
    return out


# --- history ---------------------------------------------------------------------------


@dataclass
class History:
    """The last ``history_s`` seconds of points, plus the raw scrapes the windows need."""

    history_s: float = 600.0
    interval_s: float = 1.0
    rate_window_s: float = 5.0
    quantile_window_s: float = 10.0
    points: deque[dict[str, Any]] = field(init=False)
    scrapes: deque[Scrape] = field(init=False)
    latest: Scrape | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.points = deque(maxlen=max(2, int(self.history_s / self.interval_s) + 1))
        keep = max(self.rate_window_s, self.quantile_window_s) / self.interval_s
        self.scrapes = deque(maxlen=int(keep) + 3)

    def _base(self, now: float, window_s: float) -> Scrape | None:
        """The newest scrape at least ``window_s`` old, else the oldest one kept (a
        shorter window while the history fills up)."""
        chosen: Scrape | None = None
        for scrape in self.scrapes:
            if scrape.t <= now - window_s:
                chosen = scrape
        if chosen is None and self.scrapes:
            chosen = self.scrapes[0]
        return chosen

    def add(self, scrape: Scrape) -> dict[str, Any]:
        point = derive_point(
            scrape,
            self._base(scrape.t, self.rate_window_s),
            self._base(scrape.t, self.quantile_window_s),
        )
        self.scrapes.append(scrape)
        self.points.append(point)
        self.latest = scrape
        return point

    def to_json(self, since: float | None = None) -> dict[str, Any]:
        points: Iterable[dict[str, Any]] = self.points
        if since is not None:
            points = [p for p in self.points if p["t"] > since]
        latest = self.latest
        return {
            "interval_s": self.interval_s,
            "history_s": self.history_s,
            "rate_window_s": self.rate_window_s,
            "quantile_window_s": self.quantile_window_s,
            "points": list(points),
            "experiments": experiments(latest) if latest else {},
            "model_versions": model_versions(latest) if latest else {},
        }
