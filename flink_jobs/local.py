"""The job's steps wired in process: the same per-record code as the Flink job, with
keyed state in dicts.

Records flow as in ``flink_jobs/user_features_job.py``: parse -> user step (with the CF
user half) -> item step (the item's own event with its co-visitation links and the CF
item half) -> the item's new factors back to the user step (the feed: here at once, in
the job a few records later through Kafka). With
``pickled=True`` every keyed state is stored as pickled bytes and every record between
steps is pickled once, as Flink's ``PICKLED_BYTE_ARRAY`` state and exchanges do, so
``bench ingest`` can profile what the job's Python code costs per event (``lap`` is
called after each stage with one of the ``STAGE_*`` names).

Event-time timers are not simulated: a replay in order decides what is due on the next
event of the user (``profile.apply_event`` runs ``advance_time`` first), as the job does.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flink_jobs import covisitation, item_factor_feed, items, learning, profile, steps
from personalization.events import Event
from personalization.feature_updates import FeatureUpdate
from personalization.settings import Settings

__all__ = [
    "STAGES",
    "LocalPipeline",
    "PipelineOutput",
]

STAGE_PARSE = "parse"
STAGE_RECORDS = "records"
STAGE_USER_STATE = "user_state"
STAGE_USER = "user"
STAGE_ITEM_STATE = "item_state"
STAGE_ITEM = "item"
STAGE_FEED = "feed"
STAGE_JSON = "json"
STAGES = (
    STAGE_PARSE,
    STAGE_RECORDS,
    STAGE_USER_STATE,
    STAGE_USER,
    STAGE_ITEM_STATE,
    STAGE_ITEM,
    STAGE_FEED,
    STAGE_JSON,
)


def _no_lap(stage: str) -> None:
    return None


@dataclass(slots=True)
class PipelineOutput:
    accepted: int = 0
    dead_letters: list[str] = field(default_factory=list)
    rows: list[FeatureUpdate] = field(default_factory=list)
    triggers: list[Any] = field(default_factory=list)


class _Store:
    """Keyed state: objects, or their pickles when the pipeline mimics Flink."""

    def __init__(self, pickled: bool) -> None:
        self.pickled = pickled
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None or not self.pickled:
            return value
        return pickle.loads(value)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = pickle.dumps(value) if self.pickled else value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class LocalPipeline:
    """Parse, user and item steps (the CF halves within) and the item-factor feed on
    one stream of raw events, in process."""

    def __init__(
        self,
        settings: Settings,
        *,
        pickled: bool = False,
        keep_rows: bool = True,
        lap: Callable[[str], None] = _no_lap,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        learner: learning.LearnerConfig | None = None,
        covisit: covisitation.CoVisitConfig | None = None,
    ) -> None:
        self.parse = steps.ParseStep(settings.features, settings.privacy)
        # Explicit learner configs (the offline evaluation sweeps them) win over settings.
        self.user_step = steps.UserStep(
            settings.features, settings.privacy, settings.learning, learner, settings.segments
        )
        self.item_step = steps.ItemStep(settings.features, settings.learning, learner)
        if covisit is not None:
            self.user_step.covisit = self.item_step.covisit = covisit
        self.pickled = pickled
        self.keep_rows = keep_rows
        self.lap = lap
        self.now_ms = now_ms
        self.users = _Store(pickled)
        self.items = _Store(pickled)
        self.neighbors = _Store(pickled)
        self.output = PipelineOutput()
        # target -> the items whose neighbours hold it: the other direction of each stored
        # pair, for readers that symmetrise as serving does (analysis/evaluation.py).
        self.linked_from: dict[str, set[str]] = {}
        # The item whose CF factors the latest event changed ("" when none).
        self.last_learned_item = ""
        self.cf_updates = 0

    def _hop(self, record: Any) -> Any:
        """A record crossing an exchange (pickled there and back when mimicking Flink)."""
        return pickle.loads(pickle.dumps(record)) if self.pickled else record

    def _emit(self, row: FeatureUpdate) -> None:
        row.to_json()  # what the job's sink serialises, so the profile charges it
        if self.keep_rows:
            self.output.rows.append(row)

    def run(self, raws: Iterable[str]) -> PipelineOutput:
        for raw in raws:
            self.send(raw)
        return self.output

    def send(self, raw: str) -> None:
        lap = self.lap
        parsed = self.parse(raw, self.now_ms())
        lap(STAGE_PARSE)
        if isinstance(parsed, tuple):
            self.output.dead_letters.append(parsed[1])
            return
        self.output.accepted += 1
        self.event(self._hop(parsed))
        lap(STAGE_RECORDS)

    def event(self, event: Event) -> None:
        """An accepted event, through the user step and what it sends on."""
        lap = self.lap
        previous = self.users.get(event.user_id)
        lap(STAGE_USER_STATE)
        result = self.user_step.on_event(previous, event)
        lap(STAGE_USER)
        if not result.changed:
            return
        if result.state is None:
            self.users.delete(event.user_id)
        else:
            self.users.put(event.user_id, result.state)
        lap(STAGE_USER_STATE)
        for trigger in result.triggers:
            trigger.to_json()
            self.output.triggers.append(trigger)
        for row in result.rows:
            self._emit(row)
        lap(STAGE_JSON)
        if result.learned:
            self.cf_updates += 1
        if result.item_event is not None:
            self.item_event(self._hop(result.item_event))
        lap(STAGE_RECORDS)

    def item_event(self, record: steps.ItemEvent) -> None:
        lap = self.lap
        lap(STAGE_RECORDS)
        item_id = record.item_id
        stored_neighbors = self.neighbors.get(item_id) if record.links else None
        item = self.items.get(item_id)
        lap(STAGE_ITEM_STATE)
        result = self.item_step.on_event(item, stored_neighbors, record)
        lap(STAGE_ITEM)
        if result.neighbors_changed:
            self.neighbors.put(item_id, result.neighbors)
        for target, _, _ in record.links:
            self.linked_from.setdefault(target, set()).add(item_id)
        self.output.triggers.extend(result.triggers)  # price drops (the item operator's)
        if result.state_changed and not result.item_changed and result.item is not None:
            self.items.put(item_id, result.item)
        if not (result.item_changed and result.item is not None):
            lap(STAGE_ITEM_STATE)
            return
        item = result.item
        self.items.put(item_id, item)
        neighbors = result.neighbors if record.links else self.neighbors.get(item_id)
        lap(STAGE_ITEM_STATE)
        row = self.item_step.render(item, neighbors)
        lap(STAGE_ITEM)
        self._emit(row)
        if result.learned:
            self._emit(self.item_step.cf_row(item))
            feed = item_factor_feed.encode(item_id, item.version_us, item.cf_factors)
            lap(STAGE_JSON)
            decoded = item_factor_feed.decode(feed)
            if decoded is not None:
                self.user_step.on_item_factors(*decoded)
            self.last_learned_item = item_id
            lap(STAGE_FEED)
        lap(STAGE_JSON)

    # --- what the state holds, for callers that read it (evaluation, tests) -----------

    def user_state(self, user_id: str) -> profile.UserState | None:
        state: profile.UserState | None = self.users.get(user_id)
        return state

    def item_state(self, item_id: str) -> items.ItemState | None:
        state: items.ItemState | None = self.items.get(item_id)
        return state

    def user_factors(self, user_id: str) -> list[float] | None:
        state = self.user_state(user_id)
        if state is None or not state.cf_factors:
            return None
        factors: list[float] = item_factor_feed.from_bytes(state.cf_factors).tolist()
        return factors

    def item_factors(self, item_id: str) -> np.ndarray | None:
        state = self.item_state(item_id)
        return (
            None
            if state is None or not state.cf_factors
            else item_factor_feed.from_bytes(state.cf_factors)
        )

    def item_neighbors(self, item_id: str) -> covisitation.Neighbors | None:
        state: covisitation.Neighbors | None = self.neighbors.get(item_id)
        return state
