"""The four rule kinds of the rule file, over the per-user state (pure).

Each does O(1) work per event (a type check first; a count keeps at most ``at_least``
hits) and keeps its bookkeeping in its slot of ``state.rule_state`` (see
``flink_jobs/trigger_rule.py``). Times are event times, so a replay of the same events
fires the same triggers at the same times. Slot layouts (after fingerprint and last
fired):

- count: ``hits``, a sorted list of the last ``at_least`` matching events
  ``(time, item, category, event id)`` within the window of the newest;
- absence of cart: ``done`` (fired for this burst of cart activity);
  absence of activity: the ``last_seen_ms`` it fired for; of session: nothing;
- sequence: the time and id of the pending first event (and, negated, the time of the
  latest ``then`` event, so a late ``first`` already answered does not fire);
- threshold on a feature: the value it last saw (a milestone fires when crossed).
"""

from __future__ import annotations

from typing import Any, ClassVar

from flink_jobs.sessions import Session
from flink_jobs.trigger_rule import TriggerRule, TriggerState
from personalization.events import ADD_TO_CART, PURCHASE, REMOVE_FROM_CART, Event
from personalization.trigger_rules import (
    ABSENCE,
    COUNT,
    OF_ACTIVITY,
    OF_CART,
    OF_SESSION,
    SEQUENCE,
    THRESHOLD,
    AbsenceRule,
    CountRule,
    SequenceRule,
    ThresholdRule,
)
from personalization.triggers import Trigger

__all__ = ["KINDS", "AbsenceKind", "CountKind", "SequenceKind", "ThresholdKind"]

CART_TYPES = frozenset({ADD_TO_CART, REMOVE_FROM_CART, PURCHASE})


class CountKind(TriggerRule):
    kind: ClassVar[str] = COUNT
    spec: CountRule

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        spec = self.spec
        if not spec.step.matches(event):
            return []
        slot = self.slot(state) or self.open_slot(state, [])
        hits: list[tuple[int, str, str, str]] = slot[2]
        t = event.event_time_ms
        hits.append((t, event.item_id, event.category, event.event_id))
        hits.sort()  # a late event takes its place in time
        newest = hits[-1][0]
        del hits[: max(0, len(hits) - spec.at_least)]
        hits[:] = [h for h in hits if h[0] > newest - spec.within_ms]
        if len(hits) < spec.at_least or not self.cooled(slot, t):
            return []
        evidence = {
            "count": len(hits),
            "window_s": spec.within_ms // 1000,
            "items": [h[1] for h in hits],
            "categories": sorted({h[2] for h in hits if h[2]}),
            "event_ids": [h[3] for h in hits],
        }
        return [self.fire(state, slot, t, evidence)]


class AbsenceKind(TriggerRule):
    kind: ClassVar[str] = ABSENCE
    spec: AbsenceRule

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        # Any cart event (a late one too) opens a new burst of cart activity.
        if self.spec.of == OF_CART and event.event_type in CART_TYPES:
            slot = self.slot(state)
            if slot is not None:
                slot[2] = False
        return []

    def due(self, state: TriggerState) -> int | None:
        of = self.spec.of
        if of == OF_CART:
            if not state.cart:
                return None
            slot = self.slot(state)
            if slot is not None and slot[2]:
                return None
            return state.cart_activity_ms + self.spec.within_ms
        if of == OF_ACTIVITY:
            if not state.events_total:
                return None
            slot = self.slot(state)
            if slot is not None and slot[2] == state.last_seen_ms:
                return None
            return state.last_seen_ms + self.spec.within_ms
        return None  # of session: the session's end has its own timer (profile)

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        due = self.due(state)
        if due is None or now_ms < due:
            return []
        slot = self.slot(state)
        if self.spec.of == OF_CART:
            slot = slot or self.open_slot(state, False)
            slot[2] = True  # once per burst, fired or cooling down
            if not self.cooled(slot, due):
                return []
            evidence: dict[str, Any] = {
                "items": list(state.cart),
                "quantity": sum(state.cart.values()),
                "idle_s": self.spec.within_ms // 1000,
                "last_cart_activity": state.cart_activity_ms,
            }
        else:
            slot = slot or self.open_slot(state, -1)
            slot[2] = state.last_seen_ms
            if not self.cooled(slot, due):
                return []
            evidence = {
                "idle_s": self.spec.within_ms // 1000,
                "last_event": state.last_seen_ms,
                "events_total": state.events_total,
            }
        return [self.fire(state, slot, due, evidence)]

    def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
        spec = self.spec
        if spec.of != OF_SESSION:
            return []
        if spec.max_events is not None and session.events > spec.max_events:
            return []
        if spec.max_duration_ms is not None and session.duration_ms > spec.max_duration_ms:
            return []
        if spec.converted is not None and session.converted != spec.converted:
            return []
        # The end became final one gap after the last event: that is when.
        t = session.end_ms + self.cfg.session_gap_s * 1000
        slot = self.slot(state)
        if not self.cooled(slot, t):
            return []
        evidence = {
            "session_events": session.events,
            "session_duration_s": session.duration_ms // 1000,
            "entry": session.entry,
            "session_start": session.start_ms,
        }
        return [self.fire(state, slot, t, evidence)]


class SequenceKind(TriggerRule):
    kind: ClassVar[str] = SEQUENCE
    spec: SequenceRule

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        spec = self.spec
        is_then, is_first = spec.then.matches(event), spec.first.matches(event)
        if not (is_then or is_first):
            return []
        t = event.event_time_ms
        slot = self.slot(state)
        fired: list[Trigger] = []
        # ``then`` is checked before ``first`` is recorded: an event matching both never
        # pairs with itself.
        if is_then and slot is not None:
            first_ms = slot[2]
            if spec.negate:
                slot[4] = max(slot[4], t)
                if first_ms >= 0 and t >= first_ms:
                    slot[2], slot[3] = -1, ""  # answered in time (or late: no longer due)
            elif first_ms >= 0 and 0 <= t - first_ms <= spec.within_ms and self.cooled(slot, t):
                evidence = {
                    "first_event": slot[3],
                    "first_time": first_ms,
                    "then_event": event.event_id,
                    "gap_s": (t - first_ms) // 1000,
                }
                slot[2], slot[3] = -1, ""  # one ``first`` pairs with one ``then``
                fired.append(self.fire(state, slot, t, evidence))
        if is_first:
            if slot is None:
                slot = (
                    self.open_slot(state, -1, "", -1)
                    if spec.negate
                    else self.open_slot(state, -1, "")
                )
            if spec.negate:
                # Pending: the earliest unanswered ``first``; one a ``then`` already
                # followed (arrived before it) is answered.
                if slot[4] < t and (slot[2] < 0 or t < slot[2]):
                    slot[2], slot[3] = t, event.event_id
            elif t >= slot[2]:
                slot[2], slot[3] = t, event.event_id
        return fired

    def due(self, state: TriggerState) -> int | None:
        if not self.spec.negate:
            return None
        slot = self.slot(state)
        if slot is None or slot[2] < 0:
            return None
        first_ms: int = slot[2]
        return first_ms + self.spec.within_ms

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        due = self.due(state)
        if due is None or now_ms < due:
            return []
        slot = self.slot(state)
        assert slot is not None  # due() found it
        evidence = {
            "first_event": slot[3],
            "first_time": slot[2],
            "missing": sorted(self.spec.then.events),
            "within_s": self.spec.within_ms // 1000,
        }
        slot[2], slot[3] = -1, ""
        if not self.cooled(slot, due):
            return []
        return [self.fire(state, slot, due, evidence)]


def _feature(state: TriggerState, name: str) -> float:
    if name == "purchase_count":
        return state.purchase_count
    if name == "monetary":
        return state.monetary
    if name == "events_total":
        return state.events_total
    if name == "session_count":
        return state.sessions.count
    if name == "session_events":
        current = state.sessions.current
        return current.events if current else 0
    if name == "cart_items":
        return len(state.cart)
    if name == "cart_quantity":
        return sum(state.cart.values())
    raise ValueError(f"unknown feature {name!r}")  # the loader allows only the above


def _field(event: Event, name: str) -> float | None:
    if name == "price":
        return event.price
    if name == "quantity":
        return event.quantity
    raw = event.properties.get(name.removeprefix("properties."))
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None  # a property that is not a number says nothing


class ThresholdKind(TriggerRule):
    kind: ClassVar[str] = THRESHOLD
    spec: ThresholdRule

    def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
        spec = self.spec
        if spec.step is not None and not spec.step.matches(event):
            return []
        t = event.event_time_ms
        if spec.field:
            value = _field(event, spec.field)
            if value is None or value < spec.at_least:
                return []
            slot = self.slot(state)
            if not self.cooled(slot, t):
                return []
            evidence = {
                "field": spec.field,
                "value": value,
                "at_least": spec.at_least,
                "event_id": event.event_id,
                "item": event.item_id,
            }
            return [self.fire(state, slot, t, evidence)]
        value = _feature(state, spec.feature)
        slot = self.slot(state)
        if slot is None:
            # The user's first event: everything started at 0. Otherwise the rule is
            # new to this user (added to the file later): start from what is there, so
            # a milestone passed before the rule existed does not fire now.
            before = 0.0 if state.events_total <= 1 else value
            slot = self.open_slot(state, before)
        last: float = slot[2]
        if value == last:
            return []
        slot[2] = value
        crossed = [m for m in spec.milestones if last < m <= value]
        if not crossed or not self.cooled(slot, t):
            return []
        evidence = {
            "feature": spec.feature,
            "value": value,
            "milestone": crossed[-1],
            "event_id": event.event_id,
        }
        return [self.fire(state, slot, t, evidence)]


KINDS: dict[str, type[TriggerRule]] = {
    kind.kind: kind for kind in (CountKind, AbsenceKind, SequenceKind, ThresholdKind)
}
