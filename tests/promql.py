"""The PromQL of ops/prometheus and ops/grafana, and the metric names our code defines.

Used by tests/unit/test_prometheus_rules.py (names, syntax through promtool) and
tests/integration/test_prometheus_scrape.py (every expression against a real
Prometheus scraping a test stack).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from personalization.settings import PROJECT_ROOT, Settings

PROMETHEUS_DIR = PROJECT_ROOT / "ops" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "rules" / "recording.yml", PROMETHEUS_DIR / "rules" / "alerts.yml")
RULES_TEST = PROMETHEUS_DIR / "tests" / "rules_test.yml"
LOCAL_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
COMPOSE_CONFIG = PROMETHEUS_DIR / "prometheus.compose.yml"
GRAFANA_DIR = PROJECT_ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "personalization.json"

# Grafana's range variable; Prometheus itself needs a duration there.
RATE_INTERVAL = "$__rate_interval"

# Flink's own metrics, exported by its Prometheus reporter (enabled in docker-compose.yml
# on the JobManager and TaskManagers), named after flink-runtime's MetricNames /
# DefaultCheckpointStatsTracker of the pinned apache-flink 2.2.1. Not our code: listed.
FLINK_REPORTER_METRICS = frozenset(
    {
        "flink_jobmanager_job_numRestarts",
        "flink_jobmanager_job_numberOfFailedCheckpoints",
        "flink_jobmanager_job_numberOfCompletedCheckpoints",
    }
)
# Series Prometheus writes itself for every target.
PROMETHEUS_SYNTHETIC = frozenset({"up"})


@dataclass(frozen=True)
class Expression:
    where: str  # "alert PzX", "record pz:x", "panel 'Title' A"
    expr: str


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def rule_expressions() -> list[Expression]:
    out = []
    for rule in rules():
        kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
        out.append(Expression(f"{kind} {name}", rule["expr"]))
    return out


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_expressions(rate_interval: str = "1m") -> list[Expression]:
    """Every target of every panel, Grafana's ``$__rate_interval`` replaced."""
    return [
        Expression(
            f"panel {panel['title']!r} {target['refId']}",
            target["expr"].replace(RATE_INTERVAL, rate_interval),
        )
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]


# --- metric names in PromQL -------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENT = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, aggregations, keywords, label
    names and durations left out). Syntax is promtool's job; this only finds names."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def selectors(expr: str) -> list[str]:
    """Every vector selector of an expression as written (name plus label matchers),
    e.g. ``pz_serving_rpc_duration_seconds_bucket{method="Recommend"}``."""
    text = _STRING.sub(lambda m: "\0" * len(m.group(0)), expr)
    found = []
    for name in sorted(metric_names(expr)):
        for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", text):
            end = match.end()
            if expr[end : end + 1] == "{":
                close = expr.index("}", end)
                found.append(expr[match.start() : close + 1])
            else:
                found.append(name)
    return sorted(set(found))


# --- metric names our code defines ------------------------------------------------------


def defined_metric_names() -> set[str]:
    """Every sample name our processes can expose, from the prometheus-client families
    themselves: the job / writer / model / A/B families of personalization.metrics,
    serving's families and its catalog collector (fed a real, never-refreshed catalog)."""
    from prometheus_client import REGISTRY

    from personalization import metrics
    from serving import metrics as serving_metrics
    from serving.catalog import ItemCatalog

    metrics.job_metrics()
    metrics.writer_metrics()
    metrics.model_metrics()
    metrics.experiment_metrics()
    collector = serving_metrics.CatalogCollector()
    collector.watch(ItemCatalog(Settings()))
    families = [*REGISTRY.collect(), *collector.collect()]
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
            names.add(f"{family.name}_created")
        else:
            names.add(family.name)
    return {name for name in names if name.startswith("pz_")}


def known_names() -> set[str]:
    return defined_metric_names() | recorded_names() | FLINK_REPORTER_METRICS | PROMETHEUS_SYNTHETIC


def project_path(path: str) -> Path:
    return PROJECT_ROOT / path
