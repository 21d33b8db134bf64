"""Behavioural trigger rules (pure): when to tell the business something happened.

A rule is a :class:`TriggerRule`: it reads the user's state through the
:class:`TriggerState` protocol (``flink_jobs.profile.UserState`` is the one the job
keeps) and returns :class:`~personalization.triggers.Trigger` records for the
``triggers`` topic from three hooks, called by the user operator:

- ``on_event(state, event)`` after an event was folded into the state;
- ``on_time(state, now_ms)`` when event time (the watermark) reaches ``now_ms``;
- ``on_session_end(state, session)`` when a session's end became final.

Times are event times, so a replay of the same events fires the same triggers at the
same times. A rule writes only the state fields named in its ``writes`` (its own
bookkeeping), so rules do not see each other and any set of them fires the union of
what each fires alone; a rule object holds nothing but its settings, so one object
serves every user. :data:`RULES` registers every rule by name; :class:`TriggerRules`
runs all of them.

Rules:

- ``browse_intent``: at least N product views within a window (default 3 in 10 min);
  fires again only after a full window has passed since it last fired.
- ``cart_abandoned``: the cart holds items and saw no cart activity (add, remove,
  purchase) for the idle time; fires once per burst of cart activity.
- ``quick_exit``: a session ended (gap elapsed) after at most two events, within the
  quick-exit time and without add-to-cart or purchase: a bounce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from flink_jobs.sessions import Session
from personalization.events import PRODUCT_VIEW, Event
from personalization.settings import FeatureSettings
from personalization.triggers import Trigger

__all__ = [
    "BROWSE_INTENT",
    "CART_ABANDONED",
    "QUICK_EXIT",
    "RULES",
    "TRIGGER_NAMES",
    "BrowseIntent",
    "CartAbandoned",
    "QuickExit",
    "Trigger",
    "TriggerRule",
    "TriggerRules",
    "TriggerState",
    "register_rule",
]

BROWSE_INTENT = "browse_intent"
CART_ABANDONED = "cart_abandoned"
QUICK_EXIT = "quick_exit"


class TriggerState(Protocol):
    """The part of the per-user state the rules read and keep their bookkeeping in."""

    user_id: str
    # Recent product views (event time, item, category): browse_intent's window.
    recent_views: list[tuple[int, str, str]]
    browse_fired_ms: int  # -1: never fired
    cart: dict[str, int]  # item -> quantity
    cart_activity_ms: int  # event time of the latest add / remove / purchase
    # Set by cart_abandoned when it fires; the profile clears it on cart activity.
    cart_abandon_fired: bool


class TriggerRule:
    """One behavioural rule; every hook fires nothing unless the rule overrides it."""

    # The ``trigger`` field of every record the rule emits, and its registry key.
    name: ClassVar[str]
    # The state fields the rule may write (its bookkeeping); it reads any of TriggerState.
    writes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: FeatureSettings) -> None:
        self.cfg = cfg

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        return []

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        return []

    def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
        return []


_R = TypeVar("_R", bound=type[TriggerRule])

# Every rule by name, in the order they run (registration order).
RULES: dict[str, type[TriggerRule]] = {}


def register_rule(rule: _R) -> _R:
    """Class decorator: add a rule to :data:`RULES` (the job runs every registered rule)."""
    if rule.name in RULES:
        raise ValueError(f"trigger rule {rule.name!r} is already registered")
    RULES[rule.name] = rule
    return rule


@register_rule
class BrowseIntent(TriggerRule):
    name = BROWSE_INTENT
    writes = frozenset({"recent_views", "browse_fired_ms"})

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        if event.event_type != PRODUCT_VIEW:
            return []
        window_ms = self.cfg.browse_window_s * 1000
        t = event.event_time_ms
        views = state.recent_views
        views.append((t, event.item_id, event.category))
        views.sort()
        newest = views[-1][0]
        del views[: max(0, len(views) - self.cfg.browse_views)]
        views[:] = [v for v in views if v[0] > newest - window_ms]
        cooled_down = state.browse_fired_ms < 0 or t >= state.browse_fired_ms + window_ms
        if len(views) >= self.cfg.browse_views and cooled_down:
            state.browse_fired_ms = t
            return [
                Trigger(
                    state.user_id,
                    BROWSE_INTENT,
                    t,
                    {
                        "views": len(views),
                        "window_s": self.cfg.browse_window_s,
                        "items": [item for _, item, _ in views],
                        "categories": sorted({c for _, _, c in views if c}),
                    },
                )
            ]
        return []


@register_rule
class CartAbandoned(TriggerRule):
    name = CART_ABANDONED
    writes = frozenset({"cart_abandon_fired"})

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        due = state.cart_activity_ms + self.cfg.cart_abandon_idle_s * 1000
        if state.cart and not state.cart_abandon_fired and now_ms >= due:
            state.cart_abandon_fired = True
            return [
                Trigger(
                    state.user_id,
                    CART_ABANDONED,
                    due,
                    {
                        "items": list(state.cart),
                        "quantity": sum(state.cart.values()),
                        "idle_s": self.cfg.cart_abandon_idle_s,
                        "last_cart_activity": state.cart_activity_ms,
                    },
                )
            ]
        return []


@register_rule
class QuickExit(TriggerRule):
    name = QUICK_EXIT

    def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
        if (
            session.events <= 2
            and session.duration_ms <= self.cfg.quick_exit_max_s * 1000
            and not session.converted
        ):
            return [
                Trigger(
                    state.user_id,
                    QUICK_EXIT,
                    # The end became final one gap after the last event: that is when.
                    session.end_ms + self.cfg.session_gap_s * 1000,
                    {
                        "session_events": session.events,
                        "session_duration_s": session.duration_ms // 1000,
                        "entry": session.entry,
                        "session_start": session.start_ms,
                    },
                )
            ]
        return []


TRIGGER_NAMES = tuple(RULES)


@dataclass(frozen=True, slots=True)
class _Built:
    cfg: FeatureSettings
    registered: tuple[type[TriggerRule], ...]
    rules: tuple[TriggerRule, ...]
    # Per hook, only the rules that override it: most rules use one hook.
    on_event: tuple[Callable[[TriggerState, Event], list[Trigger]], ...]
    on_time: tuple[Callable[[TriggerState, int], list[Trigger]], ...]
    on_session_end: tuple[Callable[[TriggerState, Session], list[Trigger]], ...]


def _overriding(rules: tuple[TriggerRule, ...], hook: str) -> tuple[Any, ...]:
    default = getattr(TriggerRule, hook)
    return tuple(getattr(r, hook) for r in rules if getattr(type(r), hook) is not default)


_last_built: _Built | None = None


def _build(cfg: FeatureSettings) -> _Built:
    # The profile builds a TriggerRules on every event and timer: building the rules
    # once per settings object (and registry content) keeps that to a lookup. Rules
    # are stateless, so sharing them across users and calls changes nothing.
    global _last_built
    registered = tuple(RULES.values())
    built = _last_built
    if built is None or built.cfg is not cfg or built.registered != registered:
        rules = tuple(rule(cfg) for rule in registered)
        built = _last_built = _Built(
            cfg,
            registered,
            rules,
            _overriding(rules, "on_event"),
            _overriding(rules, "on_time"),
            _overriding(rules, "on_session_end"),
        )
    return built


class TriggerRules:
    """Every registered rule behind the three hooks (what ``flink_jobs.profile`` calls)."""

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
