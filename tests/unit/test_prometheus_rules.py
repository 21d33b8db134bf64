"""ops/prometheus and ops/grafana: promtool checks and tests, and names that exist.

- ``promtool check config`` on both scrape configs (they load the rule files too),
  ``promtool check rules`` on the rules, ``promtool test rules`` on their unit tests;
- every alert has a firing case in those tests, every recording rule a value check;
- every PromQL expression of the Grafana dashboard parses (promtool, as rules of a
  generated file) and every metric name in the rules and the dashboard is one our code
  defines (read from the prometheus-client families themselves), a recording rule, or
  one of the few listed Flink reporter / Prometheus names;
- the scrape configs use the MetricsSettings ports; Grafana's provisioning matches the
  dashboard.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from personalization.settings import DispatcherSettings, MetricsSettings
from tests import promql
from tests.system_tools import require_tool

SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


# --- promtool -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [promql.LOCAL_CONFIG, promql.COMPOSE_CONFIG], ids=lambda p: p.name
)
def test_promtool_check_config(promtool: str, config: Path) -> None:
    result = run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files are found and checked through the config.
    assert result.stdout.count("SUCCESS") >= 1 + len(promql.RULE_FILES), result.stdout


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, promql.RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    total = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert total == len(promql.rules())


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", promql.RULES_TEST.name, cwd=promql.RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_promtool_test_rules_can_fail(promtool: str, tmp_path: Path) -> None:
    """The rule tests are not vacuous: a wrong expected value makes promtool fail."""
    spec = yaml.safe_load(promql.RULES_TEST.read_text())
    spec["rule_files"] = [str(promql.RULES_TEST.parent / f) for f in spec["rule_files"]]
    spec["tests"][0]["alert_rule_test"][-1]["exp_alerts"] = []  # PzTargetDown does fire
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(spec))
    result = run(promtool, "test", "rules", str(broken))
    assert result.returncode != 0
    assert "PzTargetDown" in result.stdout + result.stderr


# --- the rules themselves -----------------------------------------------------------


def rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(promql.RULES_TEST.read_text())["tests"]
    return tests


def test_every_alert_fires_in_a_unit_test() -> None:
    firing = {
        case["alertname"]
        for test in rule_tests()
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in promql.rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts without a firing test case"


def test_every_recording_rule_has_a_value_test() -> None:
    checked = {case["expr"] for test in rule_tests() for case in test.get("promql_expr_test", [])}
    assert promql.recorded_names() - checked == set()


def test_alerts_carry_severity_and_text() -> None:
    for rule in promql.rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_threshold_is_explained_in_a_comment() -> None:
    """Each alert has a comment above it (its threshold, where the number comes from)."""
    lines = (promql.RULE_FILES[1]).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip().startswith("- alert:"):
            continue
        above = []
        for previous in reversed(lines[:i]):
            stripped = previous.strip()
            if stripped.startswith("- alert:") and above:
                break
            above.append(stripped)
            if stripped.startswith("rules:"):
                break
        assert any(s.startswith("#") for s in above), line


# --- metric names and dashboard syntax ----------------------------------------------


def test_the_name_finder_flags_an_unknown_metric() -> None:
    known = promql.known_names()
    expr = 'sum by (family) (rate(pz_job_eventz_total{family="x"}[5m])) / on() vector(1)'
    assert promql.metric_names(expr) == {"pz_job_eventz_total"}
    assert promql.metric_names(expr) - known == {"pz_job_eventz_total"}
    expr = "histogram_quantile(0.99, sum by (le) (rate(pz_writer_batch_seconds_bucket[1m]))) > 1e-3"
    assert promql.metric_names(expr) == {"pz_writer_batch_seconds_bucket"}


def test_defined_names_come_from_the_code() -> None:
    names = promql.defined_metric_names()
    # One of each kind: a counter, a histogram, a lazily created gauge, a collector's.
    assert {
        "pz_job_events_total",
        "pz_serving_rpc_duration_seconds_bucket",
        "pz_writer_consumer_lag",
        "pz_serving_catalog_age_seconds",
    } <= names
    assert "pz_job_events" not in names  # a counter's samples end in _total


@pytest.mark.parametrize(
    "expression",
    promql.rule_expressions() + promql.dashboard_expressions(),
    ids=lambda e: e.where,
)
def test_expression_references_only_defined_metrics(expression: promql.Expression) -> None:
    names = promql.metric_names(expression.expr)
    assert names, f"{expression.where}: no metric in {expression.expr!r}"
    unknown = names - promql.known_names()
    assert not unknown, f"{expression.where}: no code defines {sorted(unknown)}"


def dashboard_rules_file(expressions: list[promql.Expression], path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:expr_{i}", "expr": e.expr}
                            for i, e in enumerate(expressions)
                        ],
                    }
                ]
            }
        )
    )
    return path


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    expressions = promql.dashboard_expressions()
    assert len(expressions) >= 20
    result = run(
        promtool, "check", "rules", str(dashboard_rules_file(expressions, tmp_path / "d.yml"))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_a_broken_expression_does_not_parse(promtool: str, tmp_path: Path) -> None:
    broken = [promql.Expression("broken", "sum by (family (rate(pz_job_events_total[1m]))")]
    result = run(promtool, "check", "rules", str(dashboard_rules_file(broken, tmp_path / "b.yml")))
    assert result.returncode != 0


# --- dashboard shape and provisioning -----------------------------------------------


def test_dashboard_has_the_panels() -> None:
    titles = " | ".join(p["title"] for p in promql.dashboard_panels()).lower()
    for wanted in (
        "events/s by family",
        "freshness p50 / p99",
        "recommend latency p50 / p99",
        "errors",
        "consumer lag",
        "dead letters",
        "triggers",
        "prequential",
        "per variant",
    ):
        assert wanted in titles, wanted
    panels = promql.dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_grafana_provisioning_matches_the_dashboard() -> None:
    provisioning = promql.GRAFANA_DIR / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for panel in promql.dashboard_panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "personalization.yaml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load(promql.project_path("docker-compose.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- scrape configs ------------------------------------------------------------------


def scrape_jobs(path: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(path.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_local_scrape_config_uses_the_settings_ports() -> None:
    defaults = MetricsSettings()
    jobs = scrape_jobs(promql.LOCAL_CONFIG)
    expected = {
        "pz-job": defaults.job_port,
        "pz-writer": defaults.writer_port,
        "pz-serving": defaults.serving_port,
        "pz-dispatcher": DispatcherSettings().metrics_port,
    }
    assert set(jobs) == set(expected)
    for name, port in expected.items():
        (static,) = jobs[name]["static_configs"]
        assert static["targets"] == [f"{defaults.host}:{port}"], name


def test_alert_jobs_are_scrape_jobs() -> None:
    """PzTargetDown names the scrape jobs: a renamed job would silence it."""
    (down,) = [r for r in promql.rules() if r.get("alert") == "PzTargetDown"]
    for config in (promql.LOCAL_CONFIG, promql.COMPOSE_CONFIG):
        jobs = scrape_jobs(config)
        for name in ("pz-job", "pz-writer", "pz-serving"):
            assert name in jobs and name in down["expr"]
