"""Behavioural triggers (pure): the rule file's rules behind the user operator's hooks.

The rules come from the YAML rule file (``features.triggers``; format and loader in
``personalization/trigger_rules.py``, the default file ``personalization/
default_triggers.yaml``), each bound to its kind's code (``flink_jobs/trigger_kinds.py``)
and run by :class:`TriggerRules`, which the profile calls:

- ``on_event(state, event)`` after an event was folded into the state;
- ``on_time(state, now_ms)`` when event time (the watermark) reaches ``now_ms``;
- ``on_session_end(state, session)`` when a session's end became final;
- ``due(state)``: the event times the rules need a timer at.

Times are event times, so a replay of the same events fires the same triggers at the
same times. A rule writes only its own slot of ``state.rule_state``, so rules do not see
each other and any set of them fires the union of what each fires alone.

The job reads the file once, at start (:func:`with_rules_loaded` puts its text into the
settings the operators receive); everything after that works from the settings object.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flink_jobs.sessions import Session
from flink_jobs.trigger_kinds import KINDS
from flink_jobs.trigger_rule import TriggerRule, TriggerState
from personalization.events import Event
from personalization.settings import FeatureSettings, TriggerSettings
from personalization.trigger_rules import ITEM_KINDS, Rule, load_rule_file, parse_rules
from personalization.triggers import Trigger

__all__ = [
    "BROWSE_INTENT",
    "CART_ABANDONED",
    "KINDS",
    "QUICK_EXIT",
    "TRIGGER_NAMES",
    "Trigger",
    "TriggerRule",
    "TriggerRules",
    "TriggerState",
    "load_rules",
    "with_rules_loaded",
]

# The rules of the default file (today's three triggers, as they fired before the file).
BROWSE_INTENT = "browse_intent"
CART_ABANDONED = "cart_abandoned"
QUICK_EXIT = "quick_exit"
TRIGGER_NAMES = (BROWSE_INTENT, CART_ABANDONED, QUICK_EXIT)


def _file_key(cfg: TriggerSettings) -> tuple[Any, ...]:
    if cfg.rules_yaml:
        return ("yaml", cfg.rules_yaml)
    path = cfg.rules_path
    try:
        stat = os.stat(path)
    except OSError:
        return ("file", str(path), None)
    return ("file", str(path), stat.st_mtime_ns, stat.st_size)


_loaded: dict[tuple[Any, ...], tuple[Rule, ...]] = {}


def load_rules(cfg: TriggerSettings) -> tuple[Rule, ...]:
    """The enabled rules the settings name (parsed once per file version); raises
    ``RuleFileError`` naming every wrong rule and field."""
    key = _file_key(cfg)
    rules = _loaded.get(key)
    if rules is None:
        if cfg.rules_yaml:
            rules = parse_rules(cfg.rules_yaml, str(cfg.rules_path))
        else:
            rules = load_rule_file(cfg.rules_path)
        _loaded[key] = rules
    return rules


def with_rules_loaded(cfg: FeatureSettings) -> FeatureSettings:
    """``cfg`` with the rule file's text in it, validated: the job calls this at start,
    so a bad file stops the job before it runs and TaskManagers need no copy."""
    triggers = cfg.triggers
    if triggers.rules_yaml:
        load_rules(triggers)
        return cfg
    text = triggers.rules_path.read_text(encoding="utf-8")
    parse_rules(text, str(triggers.rules_path))
    embedded = triggers.model_copy(update={"rules_yaml": text})
    return cfg.model_copy(update={"triggers": embedded})


@dataclass(frozen=True, slots=True)
class _Built:
    cfg: FeatureSettings
    rules: tuple[TriggerRule, ...]
    # Per hook, only the rules that override it: most rules use one or two.
    on_event: tuple[Callable[[TriggerState, Event], list[Trigger]], ...]
    on_time: tuple[Callable[[TriggerState, int], list[Trigger]], ...]
    on_session_end: tuple[Callable[[TriggerState, Session], list[Trigger]], ...]
    due: tuple[Callable[[TriggerState], int | None], ...]


def _overriding(rules: tuple[TriggerRule, ...], hook: str) -> tuple[Any, ...]:
    default = getattr(TriggerRule, hook)
    return tuple(getattr(r, hook) for r in rules if getattr(type(r), hook) is not default)


def build_rules(specs: tuple[Rule, ...], cfg: FeatureSettings) -> tuple[TriggerRule, ...]:
    """The user operator's rules; price drops run in the item operator
    (``flink_jobs/price_drop.py``), which sees every price of an item."""
    active = frozenset(spec.name for spec in specs)
    return tuple(
        KINDS[spec.kind](spec, cfg, active) for spec in specs if spec.kind not in ITEM_KINDS
    )


_last_built: _Built | None = None


def _build(cfg: FeatureSettings) -> _Built:
    # The profile builds a TriggerRules on every event and timer: building the rules
    # once per settings object keeps that to an identity check. Rules hold only their
    # definitions, so sharing them across users and calls changes nothing.
    global _last_built
    built = _last_built
    if built is None or built.cfg is not cfg:
        rules = build_rules(load_rules(cfg.triggers), cfg)
        built = _last_built = _Built(
            cfg,
            rules,
            _overriding(rules, "on_event"),
            _overriding(rules, "on_time"),
            _overriding(rules, "on_session_end"),
            _overriding(rules, "due"),
        )
    return built


class TriggerRules:
    """Every rule of the settings' rule file behind the hooks ``flink_jobs.profile``
    calls."""

    __slots__ = ("_built",)

    def __init__(self, cfg: FeatureSettings) -> None:
        self._built = _build(cfg)

    @property
    def rules(self) -> tuple[TriggerRule, ...]:
        return self._built.rules

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        fired: list[Trigger] = []
        for hook in self._built.on_event:
            fired += hook(state, event)
        return fired

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        fired: list[Trigger] = []
        for hook in self._built.on_time:
            fired += hook(state, now_ms)
        return fired

    def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
        fired: list[Trigger] = []
        for hook in self._built.on_session_end:
            fired += hook(state, session)
        return fired

    def due(self, state: TriggerState) -> list[int]:
        """Event times at which ``on_time`` has something to decide."""
        out = []
        for hook in self._built.due:
            t = hook(state)
            if t is not None:
                out.append(t)
        return out
