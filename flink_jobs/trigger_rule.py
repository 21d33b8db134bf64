"""What every trigger rule kind shares: the hooks, the user state it reads, its slot.

A rule object is one rule of the rule file (``personalization/trigger_rules.py``) bound
to its kind's code; it holds only its definition, so one object serves every user. Its
per-user bookkeeping lives in the user's keyed state, ``state.rule_state[name]``, a
short list ``[fingerprint, last fired ms, ...kind's values]``:

- in keyed state, it is checkpointed with the rest of the user and survives restarts;
- keyed by name and checked against the definition's fingerprint, so after a rule-file
  change the unchanged rules keep their bookkeeping and a changed rule starts afresh;
- a list of a few numbers (and, for a count, its last N hits), created only once the
  rule has something to remember for that user: a rule that never matched a user costs
  that user nothing.

Hooks, called by the user operator through :class:`flink_jobs.triggers.TriggerRules`:
``on_event`` after an event was folded into the state, ``on_time`` when event time (the
watermark) reaches ``now_ms``, ``on_session_end`` when a session's end became final,
and ``due`` (the event time the rule needs a timer at, or None).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from flink_jobs.sessions import Session, Sessions
from personalization.events import Event
from personalization.settings import FeatureSettings
from personalization.trigger_rules import Rule
from personalization.triggers import Trigger

__all__ = ["FINGERPRINT", "FIRED", "TriggerRule", "TriggerState"]

# Positions in a rule's slot shared by every kind.
FINGERPRINT = 0
FIRED = 1  # event time the rule last fired for the user (-1: never)


class TriggerState(Protocol):
    """The part of the per-user state (``flink_jobs.profile.UserState``) rules read."""

    user_id: str
    events_total: int
    last_seen_ms: int
    cart: dict[str, int]  # item -> quantity
    cart_activity_ms: int  # event time of the latest add / remove / purchase
    purchase_count: int
    monetary: float
    sessions: Sessions
    # Rule name -> its bookkeeping (the only field a rule writes).
    rule_state: dict[str, list[Any]]


class TriggerRule:
    """One configured rule; every hook fires nothing unless the kind overrides it."""

    # The rule-file ``kind`` this class implements (its registry key).
    kind: ClassVar[str]
    # The state fields a rule may write: its own slot of ``rule_state`` only.
    writes: ClassVar[frozenset[str]] = frozenset({"rule_state"})

    def __init__(self, spec: Rule, cfg: FeatureSettings, active: frozenset[str]) -> None:
        self.spec = spec
        self.name = spec.name
        self.cfg = cfg
        # Names of every rule in force: a slot under any other name is stale (a rule
        # removed from the file) and is dropped when this rule opens one of its own.
        self.active = active

    # --- hooks ---------------------------------------------------------------------

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        return []

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        return []

    def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
        return []

    def due(self, state: TriggerState) -> int | None:
        return None

    # --- bookkeeping ---------------------------------------------------------------

    def slot(self, state: TriggerState) -> list[Any] | None:
        """The rule's bookkeeping for this user, None when it has none (or it was kept
        for another definition of the rule)."""
        slot = state.rule_state.get(self.name)
        if slot is None or slot[FINGERPRINT] != self.spec.fingerprint:
            return None
        return slot

    def open_slot(self, state: TriggerState, *values: Any) -> list[Any]:
        """A fresh slot holding ``values`` after the shared positions."""
        kept = state.rule_state
        stale = [name for name in kept if name not in self.active]
        for name in stale:
            del kept[name]
        slot = [self.spec.fingerprint, -1, *values]
        kept[self.name] = slot
        return slot

    def cooled(self, slot: list[Any] | None, t: int) -> bool:
        """Whether the rule may fire for the user at event time ``t`` (its cooldown)."""
        if slot is None or slot[FIRED] < 0:
            return True
        return t >= slot[FIRED] + self.spec.cooldown_ms

    def fire(
        self, state: TriggerState, slot: list[Any] | None, t: int, evidence: dict[str, Any]
    ) -> Trigger:
        """The record, remembering when it fired (only where a cooldown needs it)."""
        if slot is not None:
            slot[FIRED] = t
        elif self.spec.cooldown_ms > 0:
            self.open_slot(state)[FIRED] = t
        return Trigger(state.user_id, self.name, t, evidence, kind=self.kind)
