"""Trigger rules as configuration: the YAML rule file, its schema and its loader (pure).

The job (``flink_jobs/triggers.py``) runs the rules this module reads; this module only
parses and validates, so a bad file is refused with every mistake named by rule and
field before the job starts, and a test can check a file without Flink. The format
(README "Trigger rules" has an example of every kind)::

    version: 1
    rules:
      - name: browse_intent          # the trigger's name on the topic; unique
        kind: count                  # count | absence | sequence | threshold | price_drop
        events: [product_view]
        at_least: 3
        within: 10m
        cooldown: 10m                # per user; 0 (default) = no cooldown
        where: {categories: [shoes], min_price: 20}   # optional event filter
      - name: cart_abandoned
        kind: absence
        of: cart                     # cart | activity | session
        within: 30m

Durations are seconds (a number) or a string with a unit: ``500ms``, ``30s``, ``10m``,
``2h``, ``1d``. Event types are the canonical names or their aliases (``pv``, ``buy``).

Each rule carries a ``fingerprint`` of its definition: the job keeps a rule's per-user
bookkeeping under its name and fingerprint, so changing the file keeps the state of
the rules that did not change and restarts only the ones that did.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from personalization.events import EVENT_TYPES, Event, EventRejected, normalize_event_type

__all__ = [
    "ABSENCE",
    "ABSENCE_OF",
    "COUNT",
    "FEATURES",
    "ITEM_KINDS",
    "KINDS",
    "OF_ACTIVITY",
    "OF_CART",
    "OF_SESSION",
    "PRICE_DROP",
    "SEQUENCE",
    "THRESHOLD",
    "AbsenceRule",
    "CountRule",
    "EventFilter",
    "PriceDropRule",
    "Rule",
    "RuleError",
    "RuleFileError",
    "SequenceRule",
    "Step",
    "ThresholdRule",
    "load_rule_file",
    "parse_rules",
]

COUNT = "count"
ABSENCE = "absence"
SEQUENCE = "sequence"
THRESHOLD = "threshold"
# Run by the item operator, which sees every price of an item (flink_jobs/price_drop.py).
PRICE_DROP = "price_drop"
KINDS = (COUNT, ABSENCE, SEQUENCE, THRESHOLD, PRICE_DROP)
# Kinds whose rules the item operator runs, not the user operator.
ITEM_KINDS = (PRICE_DROP,)

# absence ``of``: what must stay quiet.
OF_CART = "cart"  # the cart holds items and saw no cart activity for ``within``
OF_ACTIVITY = "activity"  # no event at all for ``within`` after the user's last one
OF_SESSION = "session"  # a session ended (no event for the session gap) and matched
ABSENCE_OF = (OF_CART, OF_ACTIVITY, OF_SESSION)

# Profile features a threshold rule may watch: each is O(1) to read from the state.
FEATURES = (
    "purchase_count",
    "monetary",
    "events_total",
    "session_count",
    "session_events",
    "cart_items",
    "cart_quantity",
)
# Event fields a threshold rule may compare (``properties.NAME`` too, read as a number).
EVENT_FIELDS = ("price", "quantity")
# A count rule keeps its last ``at_least`` matching events per user: bounded state.
MAX_COUNT = 50
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True, slots=True)
class RuleError:
    rule: str  # the rule's name (or "#N" when it has none, "<file>" for the top level)
    field: str
    message: str

    def __str__(self) -> str:
        return f"rule {self.rule!r}, field {self.field!r}: {self.message}"


class RuleFileError(ValueError):
    """Every mistake found in a rule file, each naming its rule and field."""

    def __init__(self, source: str, errors: list[RuleError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} error(s) in the trigger rules:\n{lines}")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a rule looks at beyond their type; an empty filter takes all."""

    categories: frozenset[str] = frozenset()
    items: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None
    pages: tuple[str, ...] = ()  # page prefixes, e.g. "/checkout"

    def matches(self, event: Event) -> bool:
        if self.categories and event.category not in self.categories:
            return False
        if self.items and event.item_id not in self.items:
            return False
        if self.min_price is not None and event.price < self.min_price:
            return False
        if self.max_price is not None and event.price > self.max_price:
            return False
        return not self.pages or event.page.startswith(self.pages)


@dataclass(frozen=True, slots=True)
class Step:
    """Events of these types that pass the filter."""

    events: frozenset[str]
    where: EventFilter = EventFilter()

    def matches(self, event: Event) -> bool:
        return event.event_type in self.events and self.where.matches(event)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: str
    cooldown_ms: int
    # CRC-32 of the definition (name and ``enabled`` aside): the key of the rule's state.
    fingerprint: int


@dataclass(frozen=True, slots=True)
class CountRule(Rule):
    """At least ``at_least`` matching events within ``within_ms``: fires on the last."""

    step: Step
    at_least: int
    within_ms: int


@dataclass(frozen=True, slots=True)
class AbsenceRule(Rule):
    of: str
    within_ms: int = 0  # cart, activity
    # session: it ended with at most these many events / this duration, and converted
    # (an add-to-cart or purchase in it) as given (None: either).
    max_events: int | None = None
    max_duration_ms: int | None = None
    converted: bool | None = None


@dataclass(frozen=True, slots=True)
class SequenceRule(Rule):
    """``first`` then ``then`` within ``within_ms`` (fires on ``then``); with ``negate``,
    ``first`` and no ``then`` within ``within_ms`` (fires when the time is up)."""

    first: Step
    then: Step
    within_ms: int
    negate: bool = False


@dataclass(frozen=True, slots=True)
class ThresholdRule(Rule):
    """An event's ``field`` at least ``at_least`` (fires on that event), or a profile
    ``feature`` crossing one of ``milestones`` (fires on the event that crossed it)."""

    step: Step | None  # the events looked at (None: all, for a feature)
    field: str = ""
    feature: str = ""
    at_least: float = 0.0
    milestones: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class PriceDropRule(Rule):
    """The price of an item in the user's cart fell by at least ``min_drop`` (a share of
    the price the user saw when adding it) within ``within_ms`` of adding it: fires for
    that user on the event that showed the lower price. The cooldown is per user and item."""

    min_drop: float
    within_ms: int
    # Which events' prices count (categories, items, price range); empty: all.
    where: EventFilter = EventFilter()


# --- parsing -------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _duration_ms(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid(field, f"expected a duration such as 30s, 10m, 2h (got {value!r})")
    if isinstance(value, int | float):
        ms = round(value * 1000)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    else:
        raise _Invalid(field, f"expected a duration such as 30s, 10m, 2h (got {value!r})")
    if ms < 0:
        raise _Invalid(field, f"must not be negative (got {value!r})")
    return ms


def _positive_duration_ms(field: str, value: Any) -> int:
    ms = _duration_ms(field, value)
    if ms <= 0:
        raise _Invalid(field, f"must be longer than 0 (got {value!r})")
    return ms


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(field, f"expected a number (got {value!r})")
    return float(value)


def _strings(field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Invalid(field, f"expected a non-empty list of strings (got {value!r})")
    return list(value)


def _event_types(field: str, value: Any) -> frozenset[str]:
    out = set()
    for raw in _strings(field, value):
        try:
            name = normalize_event_type(raw)
        except EventRejected:
            name = raw
        if name not in EVENT_TYPES:
            raise _Invalid(field, f"unknown event type {raw!r} (known: {sorted(EVENT_TYPES)})")
        out.add(name)
    return frozenset(out)


def _mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(field, f"expected a mapping (got {value!r})")
    return value


def _known(raw: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
    for key in raw:
        if key not in allowed:
            raise _Invalid(f"{prefix}{key}", f"unknown field (allowed: {sorted(allowed)})")


def _filter(field: str, raw: Any) -> EventFilter:
    where = _mapping(field, raw)
    _known(where, {"categories", "items", "min_price", "max_price", "pages"}, f"{field}.")
    low = _number(f"{field}.min_price", where["min_price"]) if "min_price" in where else None
    high = _number(f"{field}.max_price", where["max_price"]) if "max_price" in where else None
    if low is not None and high is not None and low > high:
        raise _Invalid(f"{field}.min_price", f"{low} is above max_price {high}")
    return EventFilter(
        categories=frozenset(_strings(f"{field}.categories", where["categories"]))
        if "categories" in where
        else frozenset(),
        items=frozenset(_strings(f"{field}.items", where["items"]))
        if "items" in where
        else frozenset(),
        min_price=low,
        max_price=high,
        pages=tuple(_strings(f"{field}.pages", where["pages"])) if "pages" in where else (),
    )


def _step(raw: Mapping[str, Any], prefix: str = "") -> Step:
    if "events" not in raw:
        raise _Invalid(f"{prefix}events", "required")
    where = _filter(f"{prefix}where", raw["where"]) if "where" in raw else EventFilter()
    return Step(_event_types(f"{prefix}events", raw["events"]), where)


def _nested_step(field: str, raw: Any) -> Step:
    step = _mapping(field, raw)
    _known(step, {"events", "where"}, f"{field}.")
    return _step(step, f"{field}.")


def _require(raw: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if name not in raw:
            raise _Invalid(name, "required")


_COMMON = {"name", "kind", "cooldown", "enabled"}


def _count(raw: Mapping[str, Any], common: dict[str, Any]) -> Rule:
    _known(raw, _COMMON | {"events", "where", "at_least", "within"})
    _require(raw, "events", "at_least", "within")
    at_least = raw["at_least"]
    if isinstance(at_least, bool) or not isinstance(at_least, int) or at_least < 1:
        raise _Invalid("at_least", f"expected a whole number >= 1 (got {at_least!r})")
    if at_least > MAX_COUNT:
        raise _Invalid("at_least", f"at most {MAX_COUNT} (per-user state stays bounded)")
    within = _positive_duration_ms("within", raw["within"])
    return CountRule(**common, step=_step(raw), at_least=at_least, within_ms=within)


def _absence(raw: Mapping[str, Any], common: dict[str, Any]) -> Rule:
    _require(raw, "of")
    of = raw["of"]
    if of not in ABSENCE_OF:
        raise _Invalid("of", f"expected one of {list(ABSENCE_OF)} (got {of!r})")
    if of != OF_SESSION:
        _known(raw, _COMMON | {"of", "within"})
        _require(raw, "within")
        return AbsenceRule(
            **common, of=of, within_ms=_positive_duration_ms("within", raw["within"])
        )
    # The session's end is decided by the profile's session gap (features.session_gap_s).
    _known(raw, _COMMON | {"of", "max_events", "max_duration", "converted"})
    max_events = raw.get("max_events")
    if max_events is not None and (
        isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
    ):
        raise _Invalid("max_events", f"expected a whole number >= 1 (got {max_events!r})")
    converted = raw.get("converted")
    if converted is not None and not isinstance(converted, bool):
        raise _Invalid("converted", f"expected true or false (got {converted!r})")
    max_duration = (
        _duration_ms("max_duration", raw["max_duration"]) if "max_duration" in raw else None
    )
    return AbsenceRule(
        **common,
        of=of,
        max_events=max_events,
        max_duration_ms=max_duration,
        converted=converted,
    )


def _sequence(raw: Mapping[str, Any], common: dict[str, Any]) -> Rule:
    _known(raw, _COMMON | {"first", "then", "within", "negate"})
    _require(raw, "first", "then", "within")
    negate = raw.get("negate", False)
    if not isinstance(negate, bool):
        raise _Invalid("negate", f"expected true or false (got {negate!r})")
    return SequenceRule(
        **common,
        first=_nested_step("first", raw["first"]),
        then=_nested_step("then", raw["then"]),
        within_ms=_positive_duration_ms("within", raw["within"]),
        negate=negate,
    )


def _threshold(raw: Mapping[str, Any], common: dict[str, Any]) -> Rule:
    _known(raw, _COMMON | {"events", "where", "field", "feature", "at_least", "milestones"})
    if ("field" in raw) == ("feature" in raw):
        raise _Invalid("field", "give exactly one of field (of an event) or feature")
    if "field" in raw:
        field = raw["field"]
        if not isinstance(field, str) or not (
            field in EVENT_FIELDS or (field.startswith("properties.") and len(field) > 11)
        ):
            raise _Invalid("field", f"expected price, quantity or properties.NAME (got {field!r})")
        _require(raw, "events", "at_least")
        if "milestones" in raw:
            raise _Invalid("milestones", "only for a feature")
        return ThresholdRule(
            **common, step=_step(raw), field=field, at_least=_number("at_least", raw["at_least"])
        )
    feature = raw["feature"]
    if feature not in FEATURES:
        raise _Invalid("feature", f"expected one of {list(FEATURES)} (got {feature!r})")
    if ("at_least" in raw) == ("milestones" in raw):
        raise _Invalid("milestones", "give exactly one of at_least or milestones")
    if "at_least" in raw:
        milestones: tuple[float, ...] = (_number("at_least", raw["at_least"]),)
    else:
        values = raw["milestones"]
        if not isinstance(values, list) or not values:
            raise _Invalid("milestones", f"expected a non-empty list of numbers (got {values!r})")
        milestones = tuple(_number("milestones", v) for v in values)
        if list(milestones) != sorted(set(milestones)):
            raise _Invalid("milestones", f"expected increasing numbers (got {values!r})")
    step = _step(raw) if "events" in raw else None
    if "where" in raw and step is None:
        raise _Invalid("where", "needs events")
    return ThresholdRule(**common, step=step, feature=feature, milestones=milestones)


def _price_drop(raw: Mapping[str, Any], common: dict[str, Any]) -> Rule:
    _known(raw, _COMMON | {"min_drop", "within", "where"})
    _require(raw, "min_drop", "within")
    min_drop = _number("min_drop", raw["min_drop"])
    if not 0.0 < min_drop < 1.0:
        raise _Invalid("min_drop", f"expected a share between 0 and 1, e.g. 0.1 (got {min_drop})")
    return PriceDropRule(
        **common,
        min_drop=min_drop,
        within_ms=_positive_duration_ms("within", raw["within"]),
        where=_filter("where", raw["where"]) if "where" in raw else EventFilter(),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any], dict[str, Any]], Rule]] = {
    COUNT: _count,
    ABSENCE: _absence,
    SEQUENCE: _sequence,
    THRESHOLD: _threshold,
    PRICE_DROP: _price_drop,
}


def _fingerprint(raw: Mapping[str, Any]) -> int:
    # The definition as written, name and switch aside: renaming a rule or toggling it
    # is not a new definition; any other change (a window, a filter) restarts its state.
    body = {k: v for k, v in raw.items() if k not in ("name", "enabled")}
    return zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode())


def _rule(raw: Mapping[str, Any]) -> Rule | None:
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _Invalid("enabled", f"expected true or false (got {enabled!r})")
    _require(raw, "kind")
    kind = raw["kind"]
    if kind not in _PARSERS:
        raise _Invalid("kind", f"expected one of {list(KINDS)} (got {kind!r})")
    cooldown = _duration_ms("cooldown", raw["cooldown"]) if "cooldown" in raw else 0
    common = {
        "name": raw["name"],
        "kind": kind,
        "cooldown_ms": cooldown,
        "fingerprint": _fingerprint(raw),
    }
    rule = _PARSERS[kind](raw, common)
    return rule if enabled else None


def parse_rules(text: str, source: str = "<rules>") -> tuple[Rule, ...]:
    """The enabled rules of a rule file's text, in file order; :class:`RuleFileError`
    lists every rule that is wrong (one error per rule: its first wrong field)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(source, [RuleError("<file>", "<yaml>", str(exc))]) from None
    errors: list[RuleError] = []
    if not isinstance(data, Mapping):
        raise RuleFileError(source, [RuleError("<file>", "rules", "expected a mapping")])
    for key in data:
        if key not in ("version", "rules"):
            errors.append(RuleError("<file>", str(key), "unknown field (allowed: rules, version)"))
    if data.get("version", 1) != 1:
        errors.append(RuleError("<file>", "version", f"unsupported {data.get('version')!r}"))
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        errors.append(RuleError("<file>", "rules", f"expected a list (got {raw_rules!r})"))
        raise RuleFileError(source, errors)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        label = f"#{index + 1}"
        if not isinstance(raw, Mapping):
            errors.append(RuleError(label, "<rule>", f"expected a mapping (got {raw!r})"))
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errors.append(
                RuleError(label, "name", f"expected [a-z][a-z0-9_]* up to 64 (got {name!r})")
            )
            continue
        if name in seen:
            errors.append(RuleError(name, "name", "defined twice"))
            continue
        seen.add(name)
        try:
            rule = _rule(raw)
        except _Invalid as exc:
            errors.append(RuleError(name, exc.field, exc.message))
            continue
        if rule is not None:
            rules.append(rule)
    if errors:
        raise RuleFileError(source, errors)
    return tuple(rules)


def load_rule_file(path: str | Path) -> tuple[Rule, ...]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError(str(path), [RuleError("<file>", "<path>", str(exc))]) from None
    return parse_rules(text, str(path))
