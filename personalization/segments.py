"""Rule segments from a YAML file (pure): loading, validation, evaluation.

The job labels every user row with the segments whose rule holds
(``flink_jobs/profile.py``); the thresholds are the file's, ``segments.rules_file``
(default: ``personalization/segments.yaml``, the seven rules the job had hard-coded).
A rule is a conjunction of conditions on the user's measures::

    segments:
      window_shopper:
        min: {product_view_24h: 10}          # measure >= value
        max: {add_to_cart_24h: 0, purchase_24h: 0}   # measure <= value
      mobile:
        devices: [mobile, app, ios, android] # last device is one of these

A file that does not load raises :class:`SegmentRuleError`, whose message names the
segment and the field, so a bad edit stops the job at start, not at the first user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_RULES_FILE",
    "MEASURES",
    "SegmentRule",
    "SegmentRuleError",
    "evaluate",
    "load_rules",
    "parse_rules",
    "rules_file",
    "strategy_for",
    "user_segments",
]

DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "segments.yaml"

_WINDOW_MEASURES = tuple(
    f"{kind}_{window}"
    for kind in ("product_view", "add_to_cart", "purchase")
    for window in ("5m", "1h", "24h")
)
# What a rule may test; the profile computes exactly these (flink_jobs/profile.py).
MEASURES = frozenset(
    {"sessions", "purchases", "monetary", "events", "cart_items", *_WINDOW_MEASURES}
)
_FIELDS = ("min", "max", "devices")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class SegmentRuleError(ValueError):
    """A rules file that cannot be used; the message names the segment and the field."""


@dataclass(frozen=True, slots=True)
class SegmentRule:
    name: str
    at_least: tuple[tuple[str, float], ...] = ()
    at_most: tuple[tuple[str, float], ...] = ()
    devices: frozenset[str] = frozenset()

    def matches(self, measures: Mapping[str, float], device: str) -> bool:
        for measure, bound in self.at_least:
            if measures[measure] < bound:
                return False
        for measure, bound in self.at_most:
            if measures[measure] > bound:
                return False
        return not self.devices or device in self.devices


def _bounds(name: str, field: str, value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict) or not value:
        raise SegmentRuleError(
            f"segment {name!r}: field {field!r} must map measures to numbers, got {value!r}"
        )
    out = []
    for measure, bound in value.items():
        if measure not in MEASURES:
            raise SegmentRuleError(
                f"segment {name!r}: field '{field}.{measure}': unknown measure "
                f"(known: {', '.join(sorted(MEASURES))})"
            )
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise SegmentRuleError(
                f"segment {name!r}: field '{field}.{measure}' must be a number, got {bound!r}"
            )
        out.append((str(measure), float(bound)))
    return tuple(out)


def parse_rules(data: Any) -> tuple[SegmentRule, ...]:
    """Rules from the decoded YAML, in file order."""
    entries = data.get("segments") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SegmentRuleError("segment rules file needs a top-level 'segments' mapping")
    rules = []
    for name, body in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise SegmentRuleError(
                f"segment {name!r}: a name is lowercase letters, digits and '_' "
                "(starting with a letter)"
            )
        if not isinstance(body, dict) or not body:
            raise SegmentRuleError(f"segment {name!r}: needs at least one of min, max, devices")
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise SegmentRuleError(
                f"segment {name!r}: field {unknown[0]!r} is unknown (use min, max, devices)"
            )
        devices = body.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
            raise SegmentRuleError(f"segment {name!r}: field 'devices' must be a list of names")
        if "devices" in body and not devices:
            raise SegmentRuleError(f"segment {name!r}: field 'devices' is empty")
        at_least = _bounds(name, "min", body["min"]) if "min" in body else ()
        at_most = _bounds(name, "max", body["max"]) if "max" in body else ()
        for measure, low in at_least:
            high = dict(at_most).get(measure)
            if high is not None and high < low:
                raise SegmentRuleError(
                    f"segment {name!r}: field 'min.{measure}' ({low:g}) is above "
                    f"'max.{measure}' ({high:g}): no user can match"
                )
        rules.append(SegmentRule(name, at_least, at_most, frozenset(devices)))
    return tuple(rules)


def rules_file(configured: str) -> Path:
    """``segments.rules_file``, or the default rules beside this module."""
    return Path(configured).resolve() if configured else DEFAULT_RULES_FILE


@cache
def load_rules(path: Path) -> tuple[SegmentRule, ...]:
    """The rules of a file, read once per process (the job renders a row per event)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SegmentRuleError(f"segment rules file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SegmentRuleError(f"segment rules file {path}: not YAML: {exc}") from exc
    try:
        return parse_rules(data)
    except SegmentRuleError as exc:
        raise SegmentRuleError(f"{path}: {exc}") from None


def evaluate(
    rules: tuple[SegmentRule, ...], measures: Mapping[str, float], device: str
) -> list[str]:
    """Names of the segments whose rule holds, in file order."""
    return [rule.name for rule in rules if rule.matches(measures, device)]


def user_segments(rule_segments: list[str], cluster_id: int) -> tuple[str, ...]:
    """What experiment targeting and per-segment ranking match on: the user's rule
    segments and their learned cluster as ``cluster:<id>`` (none before the first)."""
    if cluster_id >= 0:
        return (*rule_segments, f"cluster:{cluster_id}")
    return tuple(rule_segments)


def strategy_for(strategies: Mapping[str, str], segments: tuple[str, ...]) -> str | None:
    """The ranking strategy of the first entry of ``segments.strategies`` (file order)
    the user is in, or None (the default strategy)."""
    for segment, strategy in strategies.items():
        if segment in segments:
            return strategy
    return None
