"""Joining recommendation exposures with what users did next (pure).

Serving writes one *exposure* per Recommend answer (recommendation id, user, experiment,
variant, strategy, the items shown, time) to the ``exposures`` topic. Clients echo the
recommendation id in ``properties.rec_id`` of the clicks, add-to-carts and purchases that
follow. The job keys both by recommendation id and joins them in event time: an outcome
counts if it names an item that was shown and happens within the attribution window after
the exposure. When the window has passed (event-time timer), one ``Attribution`` record
per exposure goes to the ``ab_outcomes`` topic; the A/B report aggregates those.

Outcomes may arrive before their exposure (different topics); they wait in state, bounded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flink_jobs.propensity import Example
from personalization.compact_pickle import compact_pickle
from personalization.events import ADD_TO_CART, CLICK, PRODUCT_VIEW, PURCHASE, Event
from personalization.exposures import REC_ID_PROPERTY, Exposure

OUTCOME_TYPES = frozenset({CLICK, PRODUCT_VIEW, ADD_TO_CART, PURCHASE})
MAX_PENDING = 64


@compact_pickle
@dataclass(slots=True)
class Attribution:
    """State per recommendation id, and the record emitted when its window closes."""

    rec_id: str
    exposure: Exposure | None = None
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    # Shown item -> first time it was acted on (click, view, cart, purchase) within the
    # window: the propensity labels.
    acted_on: dict[str, int] = field(default_factory=dict)
    labelled: bool = False
    # Outcomes seen before the exposure: (type, item, time, revenue).
    pending: list[tuple[str, str, int, float]] = field(default_factory=list)

    def to_json(self) -> str:
        exposure = self.exposure
        assert exposure is not None
        return json.dumps(
            {
                "rec_id": self.rec_id,
                "user_id": exposure.user_id,
                "experiment": exposure.experiment,
                "variant": exposure.variant,
                "strategy": exposure.strategy,
                "exposed_ms": exposure.time_ms,
                "items": len(exposure.items),
                "clicked": self.clicks > 0,
                "carted": self.carts > 0,
                "purchased": self.purchases > 0,
                "revenue": round(self.revenue, 4),
            },
            separators=(",", ":"),
            sort_keys=True,
        )


def outcome_of(event: Event) -> tuple[str, str, int, float] | None:
    if event.event_type not in OUTCOME_TYPES or not event.properties.get(REC_ID_PROPERTY):
        return None
    revenue = event.price * event.quantity if event.event_type == PURCHASE else 0.0
    return (event.event_type, event.item_id, event.event_time_ms, revenue)


def _count(state: Attribution, outcome: tuple[str, str, int, float], window_ms: int) -> None:
    exposure = state.exposure
    assert exposure is not None
    kind, item, t, revenue = outcome
    if item not in exposure.items or not exposure.time_ms <= t <= exposure.time_ms + window_ms:
        return
    state.acted_on[item] = min(t, state.acted_on.get(item, t))
    if kind in (CLICK, PRODUCT_VIEW):
        state.clicks += 1
    elif kind == ADD_TO_CART:
        state.carts += 1
    elif kind == PURCHASE:
        state.purchases += 1
        state.revenue += revenue


def add_exposure(state: Attribution, exposure: Exposure, window_ms: int) -> None:
    if state.exposure is not None:
        return  # a redelivered exposure
    state.exposure = exposure
    for outcome in state.pending:
        _count(state, outcome, window_ms)
    state.pending.clear()


def add_outcome(state: Attribution, event: Event, window_ms: int) -> None:
    outcome = outcome_of(event)
    if outcome is None:
        return
    if state.exposure is None:
        if len(state.pending) < MAX_PENDING:
            state.pending.append(outcome)
        return
    _count(state, outcome, window_ms)


def close_time(state: Attribution, window_ms: int, wait_for_exposure_ms: int) -> int | None:
    """Event time at which the record is final."""
    if state.exposure is not None:
        return state.exposure.time_ms + window_ms + 1
    if state.pending:
        return max(t for _, _, t, _ in state.pending) + wait_for_exposure_ms
    return None


def label_time(state: Attribution, label_window_ms: int) -> int | None:
    """Event time at which the exposure's items are labelled for the propensity model."""
    exposure = state.exposure
    if exposure is None or state.labelled or not exposure.features:
        return None
    return exposure.time_ms + label_window_ms + 1


def labelled_examples(state: Attribution, label_window_ms: int) -> list[Example]:
    """One example per shown item: acted on within the label window or not."""
    exposure = state.exposure
    assert exposure is not None
    state.labelled = True
    if len(exposure.features) != len(exposure.items):
        return []
    deadline = exposure.time_ms + label_window_ms
    return [
        Example(
            exposure.rec_id,
            item,
            features,
            state.acted_on.get(item, deadline + 1) <= deadline,
            exposure.time_ms,
        )
        for item, features in zip(exposure.items, exposure.features, strict=True)
    ]


def decode_outcome(record: str | bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record)
    return data
