"""Metrics and the dashboard's arithmetic: text format -> series, percentiles from
histogram buckets, rates across counter resets; the serving interceptor; the dashboard
HTTP API with a fake scrape (no services needed)."""

from __future__ import annotations

import json
import math
import socket
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboard import series
from dashboard.app import Dashboard
from dashboard.page import PAGE
from personalization import metrics
from personalization.settings import Settings
from serving import metrics as serving_metrics

# --- percentile math -------------------------------------------------------------------


def test_histogram_quantile_interpolates_inside_the_bucket():
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4].
    buckets = [(1.0, 50.0), (2.0, 90.0), (4.0, 100.0), (math.inf, 100.0)]
    assert series.histogram_quantile(0.5, buckets) == pytest.approx(1.0)
    assert series.histogram_quantile(0.25, buckets) == pytest.approx(0.5)
    assert series.histogram_quantile(0.7, buckets) == pytest.approx(1.5)
    assert series.histogram_quantile(0.99, buckets) == pytest.approx(2.0 + 2.0 * 9 / 10)
    assert series.histogram_quantile(1.0, buckets) == pytest.approx(4.0)


def test_histogram_quantile_edge_cases():
    assert series.histogram_quantile(0.5, []) is None
    assert series.histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    # In the +Inf bucket: the largest finite bound, as Prometheus does.
    assert series.histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0
    # Empty buckets below the rank are skipped, not interpolated into.
    skipping = [(0.001, 0.0), (0.002, 0.0), (0.005, 4.0), (math.inf, 4.0)]
    assert series.histogram_quantile(0.5, skipping) == pytest.approx(0.0035)


def test_bucket_and_counter_increase_handle_resets():
    then = [(1.0, 5.0), (math.inf, 8.0)]
    now = [(1.0, 7.0), (math.inf, 12.0)]
    assert series.bucket_increase(now, then) == [(1.0, 2.0), (math.inf, 4.0)]
    restarted = [(1.0, 1.0), (math.inf, 2.0)]
    assert series.bucket_increase(restarted, then) == restarted
    assert series.counter_increase(15.0, 10.0) == 5.0
    assert series.counter_increase(3.0, 10.0) == 3.0  # restarted from zero
    assert series.counter_increase(3.0, None) == 3.0


# --- text format -> points -------------------------------------------------------------


@dataclass
class FakeRoles:
    """The metric families each process exposes, in private registries."""

    job: CollectorRegistry
    writer: CollectorRegistry
    serving: CollectorRegistry
    events: Counter
    dlq: Counter
    triggers: Counter
    freshness: Histogram
    latency: Histogram
    lag: Gauge

    @staticmethod
    def create() -> FakeRoles:
        job, writer, serving = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
        lag = Gauge("pz_job_watermark_lag_seconds", "", registry=job)
        return FakeRoles(
            job=job,
            writer=writer,
            serving=serving,
            events=Counter("pz_job_events", "", ["family", "event_type"], registry=job),
            dlq=Counter("pz_job_dead_letters", "", ["reason"], registry=job),
            triggers=Counter("pz_job_triggers", "", ["trigger"], registry=job),
            freshness=Histogram(
                "pz_writer_feature_freshness_seconds",
                "",
                ["view"],
                buckets=metrics.FRESHNESS_BUCKETS,
                registry=writer,
            ),
            latency=Histogram(
                "pz_serving_rpc_duration_seconds",
                "",
                ["service", "method"],
                buckets=serving_metrics.LATENCY_BUCKETS,
                registry=serving,
            ),
            lag=lag,
        )

    def scrape(self, t: float) -> series.Scrape:
        return series.Scrape(
            t,
            {
                name: series.parse_samples(generate_latest(registry).decode())
                for name, registry in (
                    (series.JOB, self.job),
                    (series.WRITER, self.writer),
                    (series.SERVING, self.serving),
                )
            },
        )


def test_parse_samples_keys_by_name_and_labels():
    roles = FakeRoles.create()
    roles.events.labels("clickstream", "page_view").inc(3)
    samples = series.parse_samples(generate_latest(roles.job).decode())
    key = ("pz_job_events_total", (("event_type", "page_view"), ("family", "clickstream")))
    assert samples[key] == 3.0
    assert series.total(samples, "pz_job_events_total", family="clickstream") == 3.0
    assert series.total(samples, "pz_job_events_total", family="purchase") is None


def test_points_carry_rates_percentiles_and_counts():
    roles = FakeRoles.create()
    recommend = roles.latency.labels("personalization.v1.Recommender", "Recommend")
    roles.events.labels("clickstream", "page_view").inc(100)
    roles.triggers.labels("browse_intent").inc(1)
    recommend.observe(0.001)
    history = series.History(history_s=60, interval_s=1, rate_window_s=2, quantile_window_s=2)
    first = history.add(roles.scrape(1000.0))
    assert "events.total" not in first  # no rate from a single scrape
    assert first["triggers.browse_intent"] == 1.0
    assert first["latency.Recommend.p50"] == pytest.approx(0.000875)  # since start

    # Two seconds later: 400 clickstream + 100 purchase events, new latencies and rows.
    roles.events.labels("clickstream", "product_view").inc(400)
    roles.events.labels("purchase", "purchase").inc(100)
    roles.dlq.labels("missing_user_id").inc(2)
    roles.triggers.labels("browse_intent").inc(2)
    for _ in range(98):
        recommend.observe(0.0012)
    for _ in range(2):
        recommend.observe(0.02)
    for _ in range(10):
        roles.freshness.labels("user_profile").observe(0.04)
    roles.lag.set(3.5)
    history.add(roles.scrape(1001.0))
    point = history.add(roles.scrape(1002.0))
    assert point["events.clickstream"] == pytest.approx(200.0)
    assert point["events.purchase"] == pytest.approx(50.0)
    assert point["events.engagement"] == 0.0
    assert point["events.total"] == pytest.approx(250.0)
    assert point["dlq.missing_user_id"] == 2.0 and point["dlq.total"] == 2.0
    assert point["triggers.browse_intent"] == 3.0 and point["triggers.total"] == 3.0
    assert point["job.watermark_lag_s"] == 3.5
    # Window of the last two seconds: 98 x 1.2 ms, 2 x 20 ms.
    assert 0.001 < point["latency.Recommend.p50"] <= 0.00125
    assert 0.015 < point["latency.Recommend.p99"] <= 0.025
    assert 0.025 < point["freshness.p50"] <= 0.05
    assert point["up.job"] == 1 and point["up.serving"] == 1
    # Every value is JSON-safe (no NaN) for the browser.
    json.dumps(history.to_json(), allow_nan=False)


def test_down_endpoint_and_quiet_window():
    roles = FakeRoles.create()
    history = series.History(history_s=60, interval_s=1, rate_window_s=1, quantile_window_s=1)
    history.add(roles.scrape(10.0))
    quiet = history.add(roles.scrape(11.0))
    assert "latency.Recommend.p99" not in quiet  # no observations in the window: a gap
    down = history.add(series.Scrape(12.0, {series.JOB: None, series.SERVING: {}}))
    assert down["up.job"] == 0
    assert "events.total" not in down


def test_experiments_and_model_versions_come_only_from_real_series():
    empty = series.Scrape(1.0, {series.JOB: {}})
    assert series.experiments(empty) == {} and series.model_versions(empty) == {}
    registry = CollectorRegistry()
    exposures = Counter("pz_experiment_exposures", "", ["experiment", "variant"], registry=registry)
    actions = Counter(
        "pz_experiment_actions", "", ["experiment", "variant", "action"], registry=registry
    )
    version = Gauge("pz_model_version", "", ["model", "version"], registry=registry)
    exposures.labels("exp1", "control").inc(10)
    actions.labels("exp1", "control", "click").inc(3)
    version.labels("cf", "v7").set(1)
    scrape = series.Scrape(
        2.0, {series.SERVING: series.parse_samples(generate_latest(registry).decode())}
    )
    assert series.experiments(scrape) == {"exp1": {"control": {"exposures": 10.0, "click": 3.0}}}
    assert series.model_versions(scrape) == {"cf": "v7"}


# --- process-side helpers --------------------------------------------------------------


def test_metrics_server_tolerates_a_taken_port_and_zero():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert metrics.start_metrics_server("127.0.0.1", port) is False
    assert metrics.start_metrics_server("127.0.0.1", 0) is False


def test_metric_values_stay_in_memory_after_feast_import():
    import feast.metrics  # noqa: F401  (sets PROMETHEUS_MULTIPROC_DIR)
    from prometheus_client import values

    assert isinstance(metrics.writer_metrics().batches._value, values.MutexValue)
    assert isinstance(serving_metrics.FALLBACKS.labels("x")._value, values.MutexValue)


def test_model_version_hook_keeps_one_version_per_model():
    hook = metrics.model_metrics()
    hook.set_version("unit-test-model", "v1")
    hook.set_version("unit-test-model", "v2")
    text = generate_latest().decode()
    assert 'pz_model_version{model="unit-test-model",version="v2"} 1.0' in text
    assert 'version="v1"' not in text


# --- the dashboard process with a fake scrape ------------------------------------------


def test_dashboard_serves_page_and_series():
    roles = FakeRoles.create()
    roles.events.labels("engagement", "dwell").inc(5)
    texts = {
        "job": lambda: generate_latest(roles.job).decode(),
        "writer": lambda: generate_latest(roles.writer).decode(),
    }

    def fetch(url: str, timeout: float) -> str:
        for name, text in texts.items():
            if f":{ports[name]}/" in url:
                return text()
        raise ConnectionRefusedError("serving is down")

    ports = {"job": 1001, "writer": 1002, "serving": 1003}
    settings = Settings.model_validate(
        {
            "metrics": {
                "job_port": ports["job"],
                "writer_port": ports["writer"],
                "serving_port": ports["serving"],
            }
        }
    )
    dashboard = Dashboard(settings, port=0, fetch=fetch)
    dashboard.scrape_once()
    roles.events.labels("engagement", "dwell").inc(10)
    dashboard.scrape_once()
    dashboard.start()
    try:
        with urllib.request.urlopen(dashboard.url + "api/series", timeout=5) as response:
            payload = json.loads(response.read())
        with urllib.request.urlopen(dashboard.url, timeout=5) as response:
            page = response.read().decode()
    finally:
        dashboard.stop()
    last = payload["points"][-1]
    assert last["up.job"] == 1 and last["up.serving"] == 0
    assert last["events.engagement"] > 0
    assert "ConnectionRefusedError" in payload["endpoints"]["serving"]["error"]
    assert page == PAGE and 'id="v-events"' in page and "no data yet" in page
