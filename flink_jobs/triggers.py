"""Behavioural trigger rules (pure): when to tell the business something happened.

Each rule reads the user's state (see ``flink_jobs/profile.py``) and returns
``Trigger`` records for the ``triggers`` topic. Times are event times, so a replay of
the same events fires the same triggers at the same times.

Rules:
- ``browse_intent``: at least N product views within a window (default 3 in 10 min);
  fires again only after a full window has passed since it last fired.
- ``cart_abandoned``: the cart holds items and saw no cart activity (add, remove,
  purchase) for the idle time; fires once per burst of cart activity.
- ``quick_exit``: a session ended (gap elapsed) after at most two events, within the
  quick-exit time and without add-to-cart or purchase: a bounce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from personalization.events import PRODUCT_VIEW, Event
from personalization.settings import FeatureSettings

if TYPE_CHECKING:
    from flink_jobs.profile import UserState
    from flink_jobs.sessions import Session

BROWSE_INTENT = "browse_intent"
CART_ABANDONED = "cart_abandoned"
QUICK_EXIT = "quick_exit"
TRIGGER_NAMES = (BROWSE_INTENT, CART_ABANDONED, QUICK_EXIT)


@dataclass(frozen=True, slots=True)
class Trigger:
    user_id: str
    trigger: str
    time_ms: int
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "user_id": self.user_id,
                "trigger": self.trigger,
                "time": self.time_ms,
                "evidence": self.evidence,
            },
            separators=(",", ":"),
            sort_keys=True,
        )


class TriggerRules:
    def __init__(self, cfg: FeatureSettings) -> None:
        self.cfg = cfg

    def on_event(self, state: UserState, event: Event) -> list[Trigger]:
        if event.event_type != PRODUCT_VIEW:
            return []
        return self._browse_intent(state, event)

    def on_time(self, state: UserState, now_ms: int) -> list[Trigger]:
        return self._cart_abandoned(state, now_ms)

    def on_session_end(self, state: UserState, session: Session) -> list[Trigger]:
        if (
            session.events <= 2
            and session.duration_ms <= self.cfg.quick_exit_max_s * 1000
            and not session.converted
        ):
            return [
                Trigger(
                    state.user_id,
                    QUICK_EXIT,
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

    def _browse_intent(self, state: UserState, event: Event) -> list[Trigger]:
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

    def _cart_abandoned(self, state: UserState, now_ms: int) -> list[Trigger]:
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
