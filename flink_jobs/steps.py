"""The job's per-record work, one step per operator (pure: no Flink, no I/O).

Each step takes the keyed state it needs and one record, and returns the new state and
what goes downstream. Three callers run exactly this code:

- the Flink adapters in ``flink_jobs/operators.py`` (state in Flink's keyed state,
  records through Flink's exchanges);
- :class:`flink_jobs.local.LocalPipeline`, the same steps wired in process with dict
  state (``bench ingest``'s profile, tests that compare with the real job);
- the offline replay of ``analysis/evaluation.py``.

So the per-record logic has one body; only the plumbing differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from feature_repo.names import ITEM_CF, ITEM_STATS, USER_CF, USER_PROFILE
from flink_jobs import attribution, covisitation, impressions, items, learning, profile
from flink_jobs.model_quality import PrequentialMonitor
from flink_jobs.triggers import Trigger
from personalization.compact_pickle import compact_pickle
from personalization.events import (
    ERASURE,
    Event,
    Rejection,
    ValidationLimits,
    dead_letter,
    parse_event,
)
from personalization.feature_updates import FeatureUpdate, next_version_us
from personalization.privacy import pseudonymizer
from personalization.settings import FeatureSettings, LearningSettings, PrivacySettings

__all__ = [
    "CFResult",
    "CFStep",
    "CoVisitEdge",
    "ItemEvent",
    "ItemResult",
    "ItemStep",
    "ParseStep",
    "UserResult",
    "UserStep",
]


# --- records between the steps ---------------------------------------------------------


@compact_pickle
@dataclass(frozen=True, slots=True)
class CoVisitEdge:
    """``source`` was interacted with just before ``target`` (keyed by ``source``).

    The job no longer sends these (each pair is stored once, at the later item); the item
    step still folds them, for records of an older job version restored from a
    checkpoint (unaligned checkpoints keep in-flight records)."""

    source: str
    target: str
    weight: float
    time_ms: int

    @property
    def item_id(self) -> str:
        return self.source


@compact_pickle
@dataclass(frozen=True, slots=True)
class ItemEvent:
    """An accepted event for the item branch, with its co-visitation links: the user's
    previous items (target, weight, time), stored at this item."""

    event: Event
    links: tuple[tuple[str, float, int], ...] = ()

    @property
    def item_id(self) -> str:
        return self.event.item_id


# --- parse -----------------------------------------------------------------------------


class ParseStep:
    """Raw payload -> ``Event`` (user id pseudonymised when a secret is set), or the
    dead-letter record that says why it was refused."""

    def __init__(self, cfg: FeatureSettings, privacy: PrivacySettings) -> None:
        self.limits = ValidationLimits.from_settings(cfg)
        self.hmac_secret = privacy.hmac_secret
        self.pseudonym = pseudonymizer(privacy.hmac_secret)

    def __call__(
        self, raw: str, now_ms: int, source: str = "kafka"
    ) -> Event | tuple[Rejection, str]:
        parsed = parse_event(raw, now_ms=now_ms, limits=self.limits)
        if isinstance(parsed, Rejection):
            return parsed, dead_letter(raw, parsed, source=source, now_ms=now_ms)
        if self.hmac_secret:
            return replace(parsed, user_id=self.pseudonym(parsed.user_id))
        return parsed


# --- user ------------------------------------------------------------------------------


@dataclass(slots=True)
class UserResult:
    """What one record did to a user, and what it sends on."""

    # The state to keep: None = clear it (erasure); ``changed`` False = nothing to write.
    state: profile.UserState | None
    changed: bool = False
    duplicate: bool = False
    opted_out: bool = False
    impression: bool = False
    rows: list[FeatureUpdate] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    timers: list[int] = field(default_factory=list)
    # For the item branch: the item's own event (with its co-visitation links); for the
    # learner: the interaction; for A/B: the outcome.
    item_event: ItemEvent | None = None
    interaction: Event | None = None
    outcome: Event | None = None


class UserStep:
    """Keyed by user: dedup, profile, impressions, triggers, the user's feature row."""

    def __init__(
        self,
        cfg: FeatureSettings,
        privacy: PrivacySettings,
        learning_cfg: LearningSettings | None = None,
    ) -> None:
        self.cfg = cfg
        self.covisit = covisitation.CoVisitConfig.from_settings(learning_cfg or LearningSettings())
        self.default_consent = privacy.default_consent

    def row(self, user: profile.UserState) -> FeatureUpdate:
        return FeatureUpdate(
            USER_PROFILE, user.user_id, user.version_us, profile.user_feature_row(user, self.cfg)
        )

    def on_event(self, previous: profile.UserState | None, event: Event) -> UserResult:
        if event.event_type == ERASURE:
            # Forget everything kept about the user; the writer erases the store entry.
            version = next_version_us(event.event_time_ms, previous.version_us if previous else 0)
            erase = FeatureUpdate(USER_PROFILE, event.user_id, version, {}, erase=True)
            return UserResult(None, changed=True, rows=[erase])
        user = previous or profile.new_state(event.user_id, self.default_consent)
        outcome = profile.apply_event(user, event, self.cfg)
        if not outcome.changed:
            return UserResult(
                previous, duplicate=outcome.duplicate, opted_out=not outcome.duplicate
            )
        result = UserResult(user, changed=True, triggers=list(outcome.triggers))
        interacted = bool(event.item_id) and user.consent != "denied"
        links: tuple[tuple[str, float, int], ...] = ()
        if interacted:
            # Co-visitation: the item links with the user's previous items. Each pair is
            # stored once, at the later item (the record goes there anyway); serving adds
            # the other direction when it builds its catalog (serving/catalog_snapshot.py),
            # so no record per edge has to reach the earlier items.
            t = event.event_time_ms
            links = covisitation.links_for(user.covisit, event.item_id, t, 1.0, self.covisit)
            covisitation.push_history(user.covisit, event.item_id, t, self.covisit)
        result.timers = profile.due_timers(user, self.cfg)
        result.rows.append(self.row(user))
        if interacted:
            result.item_event = ItemEvent(event, links)
            result.interaction = event
            if attribution.outcome_of(event) is not None:
                result.outcome = event
        return result

    def on_impression(
        self, previous: profile.UserState | None, impression: impressions.Impression
    ) -> UserResult:
        user = previous or profile.new_state(impression.user_id, self.default_consent)
        outcome = profile.apply_impression(user, impression, self.cfg)
        if not outcome.changed:
            return UserResult(previous, duplicate=outcome.duplicate)
        return UserResult(user, changed=True, impression=True, rows=[self.row(user)])

    def on_timer(self, user: profile.UserState | None, timestamp: int) -> list[Trigger]:
        """Triggers due at ``timestamp`` (event time); ``user`` is updated in place."""
        if user is None:
            return []
        return profile.advance_time(user, timestamp, self.cfg)


# --- item ------------------------------------------------------------------------------


@dataclass(slots=True)
class ItemResult:
    item: items.ItemState | None
    neighbors: covisitation.Neighbors | None
    item_changed: bool = False
    neighbors_changed: bool = False
    row: FeatureUpdate | None = None


class ItemStep:
    """Keyed by item: popularity windows, trending score, co-visitation neighbours.

    Edges only update the neighbours; the item's row (with them) goes out on the item's
    own next event, so co-visitation adds no rows to the changelog.
    """

    def __init__(self, cfg: FeatureSettings, learning_cfg: LearningSettings | None = None) -> None:
        self.half_life_s = cfg.trending_half_life_s
        self.covisit = covisitation.CoVisitConfig.from_settings(learning_cfg or LearningSettings())

    def link(self, neighbors: covisitation.Neighbors | None, links: Any) -> covisitation.Neighbors:
        neighbors = neighbors or covisitation.Neighbors()
        for target, weight, t in links:
            covisitation.add_edge(neighbors, target, weight, t, self.covisit)
        return neighbors

    def on_edge(
        self, neighbors: covisitation.Neighbors | None, edge: CoVisitEdge
    ) -> covisitation.Neighbors:
        return self.link(neighbors, [(edge.target, edge.weight, edge.time_ms)])

    def on_event(
        self,
        item: items.ItemState | None,
        neighbors: covisitation.Neighbors | None,
        record: ItemEvent,
    ) -> ItemResult:
        """Fold the item's own event (and its links). ``neighbors`` is read by the caller
        only when the record has links; the row is rendered by :meth:`render` when the
        item changed, with the neighbours the caller holds (fetched then if need be)."""
        event = record.event
        result = ItemResult(item, neighbors)
        if record.links:
            result.neighbors = self.link(neighbors, record.links)
            result.neighbors_changed = True
        state = item or items.ItemState(event.item_id)
        if items.apply_item_event(state, event, self.half_life_s):
            result.item = state
            result.item_changed = True
        return result

    def render(
        self, item: items.ItemState, neighbors: covisitation.Neighbors | None
    ) -> FeatureUpdate:
        return FeatureUpdate(
            ITEM_STATS,
            item.item_id,
            item.version_us,
            items.item_feature_row(item, neighbors, self.covisit),
        )


# --- collaborative filtering -----------------------------------------------------------


@dataclass(slots=True)
class CFResult:
    learned: bool = False
    rows: list[FeatureUpdate] = field(default_factory=list)
    dirty_users: list[str] = field(default_factory=list)
    dirty_items: list[str] = field(default_factory=list)
    version_us: int = 0


class CFStep:
    """One online matrix-factorisation learner: evaluate (prequential), then learn, then
    the user's and the item's new factors as ``user_cf`` / ``item_cf`` rows."""

    def __init__(self, cfg: LearningSettings) -> None:
        self.learner_cfg = learning.LearnerConfig.from_settings(cfg)
        self.prequential_every = cfg.prequential_every

    def new_model(self) -> learning.OnlineMF:
        return learning.OnlineMF(self.learner_cfg)

    def new_monitor(self) -> PrequentialMonitor:
        return PrequentialMonitor(every=self.prequential_every)

    def on_interaction(
        self,
        model: learning.OnlineMF,
        quality: PrequentialMonitor,
        event: Event,
        previous_version_us: int,
    ) -> CFResult:
        """Learn ``event``; the caller has imported the user's and item's stored factors
        into ``model`` (see :meth:`needs`) and stores the dirty ones afterwards."""
        weight = learning.interaction_weight(event.event_type, learning.rating_of(event))
        if weight <= 0:
            return CFResult(version_us=previous_version_us)
        quality.evaluate(model, event.user_id, event.item_id)
        model.learn_one(event.user_id, event.item_id, weight, event.event_time_ms)
        dirty_users, dirty_items = model.drain_dirty()
        version = next_version_us(event.event_time_ms, previous_version_us)
        rows = [
            FeatureUpdate(
                USER_CF, event.user_id, version, {"cf_vector": model.export_user(event.user_id)}
            ),
            FeatureUpdate(
                ITEM_CF, event.item_id, version, {"cf_vector": model.export_item(event.item_id)}
            ),
        ]
        return CFResult(True, rows, list(dirty_users), list(dirty_items), version)

    @staticmethod
    def learns(event: Event) -> bool:
        """Whether ``event`` is an interaction the learner learns (a positive weight):
        callers check it before loading any factors from state."""
        return learning.interaction_weight(event.event_type, learning.rating_of(event)) > 0

    @staticmethod
    def needs(model: learning.OnlineMF, event: Event) -> tuple[bool, bool]:
        """Whether the user's / the item's factors must be loaded from state first."""
        return model.user_vector(event.user_id) is None, model.item_vector(event.item_id) is None
