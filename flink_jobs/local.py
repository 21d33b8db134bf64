"""The job's steps wired in process: the same per-record code as the Flink job, with
keyed state in dicts.

Records flow as in ``flink_jobs/user_features_job.py``: parse -> user step -> item step
(the item's own event with its co-visitation links) and the CF step. With
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

from flink_jobs import covisitation, items, learning, profile, steps
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
STAGE_CF = "cf"
STAGE_CF_STATE = "cf_state"
STAGE_JSON = "json"
STAGES = (
    STAGE_PARSE,
    STAGE_RECORDS,
    STAGE_USER_STATE,
    STAGE_USER,
    STAGE_ITEM_STATE,
    STAGE_ITEM,
    STAGE_CF,
    STAGE_CF_STATE,
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
    """Parse, user, item and CF steps on one stream of raw events, in process."""

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
        self.user_step = steps.UserStep(settings.features, settings.privacy, settings.learning)
        self.item_step = steps.ItemStep(settings.features, settings.learning)
        self.cf_step = steps.CFStep(settings.learning)
        # Explicit learner configs (the offline evaluation sweeps them) win over settings.
        if learner is not None:
            self.cf_step.learner_cfg = learner
        if covisit is not None:
            self.user_step.covisit = self.item_step.covisit = covisit
        self.pickled = pickled
        self.keep_rows = keep_rows
        self.lap = lap
        self.now_ms = now_ms
        self.users = _Store(pickled)
        self.items = _Store(pickled)
        self.neighbors = _Store(pickled)
        self.cf_users = _Store(pickled)
        self.cf_items = _Store(pickled)
        self.cf_version = 0
        self.model = self.cf_step.new_model()
        self.quality = self.cf_step.new_monitor()
        self.output = PipelineOutput()
        # target -> the items whose neighbours hold it: the other direction of each stored
        # pair, for readers that symmetrise as serving does (analysis/evaluation.py).
        self.linked_from: dict[str, set[str]] = {}
        # The CF step's result for the latest interaction (None when it learnt nothing).
        self.last_cf: steps.CFResult | None = None

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
        if result.item_event is not None:
            self.item_event(self._hop(result.item_event))
        lap(STAGE_RECORDS)
        if result.interaction is not None:
            self.interaction(self._hop(result.interaction))

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
        if not (result.item_changed and result.item is not None):
            lap(STAGE_ITEM_STATE)
            return
        self.items.put(item_id, result.item)
        neighbors = result.neighbors if record.links else self.neighbors.get(item_id)
        lap(STAGE_ITEM_STATE)
        row = self.item_step.render(result.item, neighbors)
        lap(STAGE_ITEM)
        self._emit(row)
        lap(STAGE_JSON)

    def interaction(self, event: Event) -> None:
        lap = self.lap
        lap(STAGE_RECORDS)
        if not self.cf_step.learns(event):
            lap(STAGE_CF)
            return
        load_user, load_item = self.cf_step.needs(self.model, event)
        if load_user and (stored := self.cf_users.get(event.user_id)) is not None:
            self.model.import_user(event.user_id, stored)
        if load_item and (stored := self.cf_items.get(event.item_id)) is not None:
            self.model.import_item(event.item_id, stored)
        lap(STAGE_CF_STATE)
        result = self.cf_step.on_interaction(self.model, self.quality, event, self.cf_version)
        self.last_cf = result
        lap(STAGE_CF)
        for user_id in result.dirty_users:
            self.cf_users.put(user_id, self.model.export_user(user_id))
        for item_id in result.dirty_items:
            self.cf_items.put(item_id, self.model.export_item(item_id))
        self.cf_version = result.version_us
        lap(STAGE_CF_STATE)
        for row in result.rows:
            self._emit(row)
        lap(STAGE_JSON)

    # --- what the state holds, for callers that read it (evaluation, tests) -----------

    def user_state(self, user_id: str) -> profile.UserState | None:
        state: profile.UserState | None = self.users.get(user_id)
        return state

    def item_state(self, item_id: str) -> items.ItemState | None:
        state: items.ItemState | None = self.items.get(item_id)
        return state

    def item_neighbors(self, item_id: str) -> covisitation.Neighbors | None:
        state: covisitation.Neighbors | None = self.neighbors.get(item_id)
        return state
