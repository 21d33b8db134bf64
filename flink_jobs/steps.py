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

import numpy as np

from feature_repo.names import ITEM_CF, ITEM_STATS, USER_CF, USER_PROFILE
from flink_jobs import (
    attribution,
    clustering,
    covisitation,
    impressions,
    items,
    learning,
    price_drop,
    profile,
)
from flink_jobs.item_factor_feed import from_bytes, to_bytes
from flink_jobs.model_quality import PrequentialMonitor
from flink_jobs.triggers import Trigger
from flink_jobs.triggers import load_rules as load_trigger_rules
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
from personalization.segments import load_rules, rules_file
from personalization.settings import (
    FeatureSettings,
    LearningSettings,
    PrivacySettings,
    SegmentSettings,
)

__all__ = [
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
    previous items (target, weight, time), stored at this item; and for the item half of
    the online MF, the user's factors before the user's own step and the interaction's
    learning weight (0: nothing to learn)."""

    event: Event
    links: tuple[tuple[str, float, int], ...] = ()
    user_factors: bytes = b""
    cf_weight: float = 0.0

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
    # For the item branch: the item's own event (with its co-visitation links and the
    # user's side of the CF step); for A/B: the outcome.
    item_event: ItemEvent | None = None
    outcome: Event | None = None
    # The user half of the online MF learnt this event (its prequential check ran first).
    learned: bool = False


class UserStep:
    """Keyed by user: dedup, profile, impressions, triggers, the user's feature row, and
    the user half of the online MF (``cf``: its item factors as last published)."""

    def __init__(
        self,
        cfg: FeatureSettings,
        privacy: PrivacySettings,
        learning_cfg: LearningSettings | None = None,
        learner: learning.LearnerConfig | None = None,
        segments: SegmentSettings | None = None,
    ) -> None:
        self.cfg = cfg
        learning_cfg = learning_cfg or LearningSettings()
        self.covisit = covisitation.CoVisitConfig.from_settings(learning_cfg)
        self.default_consent = privacy.default_consent
        # Rule segments from their file (read once, errors at start); the clusters of
        # this subtask (flink_jobs/clustering.py), None when segments.clusters is 0.
        segments = segments or SegmentSettings()
        self.segment_rules = load_rules(rules_file(segments.rules_file))
        self.clusters = clustering.Clusters(segments) if segments.clusters > 0 else None
        # A user inactive this long (event time) is forgotten: state and stored rows.
        self.retention_ms = privacy.retention_days * 86_400_000
        self.cf = CFStep(learning_cfg, learner)
        self.known_items = self.cf.new_known_items()
        self.quality = self.cf.new_monitor()
        # True: results carry no profile / CF rows (only erasures); the operator renders
        # a changed user's rows later, once per interval, with :meth:`rows`
        # (features.user_rows_every_ms, flink_jobs/row_schedule.py).
        self.defer_rows = False

    def expires_at(self, user: profile.UserState) -> int | None:
        """Event time at which ``user`` has been inactive for the retention period: their
        last change (an event, an impression, a consent decision) is the version's time."""
        if not self.retention_ms or not user.version_us:
            return None
        return user.version_us // 1000 + self.retention_ms

    def expired(self, user: profile.UserState | None, now_ms: int) -> FeatureUpdate | None:
        """The erasure of ``user`` when it is past retention at ``now_ms``, else None."""
        if user is None:
            return None
        due = self.expires_at(user)
        if due is None or now_ms < due:
            return None
        version = next_version_us(now_ms, user.version_us)
        return FeatureUpdate(USER_PROFILE, user.user_id, version, {}, erase=True)

    def row(self, user: profile.UserState) -> FeatureUpdate:
        return FeatureUpdate(
            USER_PROFILE,
            user.user_id,
            user.version_us,
            profile.user_feature_row(user, self.cfg, self.segment_rules),
        )

    def rows(self, user: profile.UserState, learned: bool | None) -> list[FeatureUpdate]:
        """The user's rows as its state is now: the profile, and the CF factors when they
        changed (``learned``; None: not known, as after a restore: when there are any)."""
        out = [self.row(user)]
        if (learned is None or learned) and user.cf_factors:
            out.append(self.cf.user_row(user))
        return out

    def cluster(self, user: profile.UserState, time_ms: int) -> list[Trigger]:
        """Re-cluster the user when due (first event, a new session, every N events):
        most events cost one comparison. Returns ``segment_changed`` if the id moved."""
        clusters = self.clusters
        if clusters is None or user.consent == "denied":
            return []
        current = user.sessions.current
        new_session = current is not None and current.events == 1
        if not clusters.due(user.cluster, user.events_total, new_session):
            return []
        vector = clustering.profile_vector(
            user.interests,
            user.purchase_count,
            user.monetary,
            user.events_total,
            user.last_purchase_ms,
            user.last_seen_ms,
            clusters.dims,
        )
        user.cluster, fired = clusters.update(
            user.user_id, user.cluster, vector, user.events_total, time_ms
        )
        return fired

    def on_event(self, previous: profile.UserState | None, event: Event) -> UserResult:
        if event.event_type == ERASURE:
            # Forget everything kept about the user; the writer erases the store entry.
            version = next_version_us(event.event_time_ms, previous.version_us if previous else 0)
            erase = FeatureUpdate(USER_PROFILE, event.user_id, version, {}, erase=True)
            return UserResult(None, changed=True, rows=[erase])
        # Past retention, a user starts from nothing, as if the retention timer had
        # fired first (in the job it fires once the watermark passes; a replay in order
        # decides it here, so both give the same rows).
        expired = self.expired(previous, event.event_time_ms)
        if expired is not None:
            previous = None
        user = previous or profile.new_state(event.user_id, self.default_consent)
        consent_before = user.consent
        outcome = profile.apply_event(user, event, self.cfg)
        if not outcome.changed:
            if expired is not None:  # a duplicate or an opted-out user's: still forget
                return UserResult(None, changed=True, rows=[expired])
            return UserResult(
                previous, duplicate=outcome.duplicate, opted_out=not outcome.duplicate
            )
        result = UserResult(user, changed=True, triggers=list(outcome.triggers))
        if expired is None and user.consent == "denied" and consent_before != "denied":
            # Consent withdrawn: the state kept nothing; the store keeps nothing either
            # (the learned factors are another view of the same entity: an erasure
            # clears them all, then the user's new row says "denied").
            expired = FeatureUpdate(USER_PROFILE, user.user_id, user.version_us, {}, erase=True)
        if expired is not None:
            result.rows.append(expired)
            user.version_us = next_version_us(event.event_time_ms, expired.version_us)
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
        result.triggers += self.cluster(user, event.event_time_ms)
        result.timers = self.arm(user)
        if not self.defer_rows:
            result.rows.append(self.row(user))
        if interacted:
            user_factors = b""
            if (weight := self.cf.weight(event)) > 0:
                user_factors = self.cf.learn_user(self.known_items, self.quality, user, event)
                if not self.defer_rows:
                    result.rows.append(self.cf.user_row(user))
                result.learned = True
            result.item_event = ItemEvent(event, links, user_factors, weight)
            if attribution.outcome_of(event) is not None:
                result.outcome = event
        return result

    def on_item_factors(self, item_id: str, version_us: int, factors: np.ndarray) -> bool:
        """An item's factors as its item operator published them (the feed)."""
        return self.known_items.put(item_id, factors, version_us)

    def on_impression(
        self, previous: profile.UserState | None, impression: impressions.Impression
    ) -> UserResult:
        user = previous or profile.new_state(impression.user_id, self.default_consent)
        outcome = profile.apply_impression(user, impression, self.cfg)
        if not outcome.changed:
            return UserResult(previous, duplicate=outcome.duplicate)
        rows = [] if self.defer_rows else [self.row(user)]
        return UserResult(user, changed=True, impression=True, rows=rows)

    def arm(self, user: profile.UserState) -> list[int]:
        """The timer to register, if any: the earliest due time, unless the timer already
        armed fires no later (it re-arms then, from :meth:`on_timer`). A session's end
        moves with every event; registering it each time meant one registration and one
        firing per event, both calls into the JVM."""
        due = profile.due_timers(user, self.cfg)
        if (expiry := self.expires_at(user)) is not None:
            due.append(expiry)
        if not due:
            return []
        first = min(due)
        if user.timer_ms and user.timer_ms <= first:
            return []
        user.timer_ms = first
        return [first]

    def on_timer(
        self, user: profile.UserState | None, timestamp: int
    ) -> tuple[list[Trigger], list[int]]:
        """Triggers due at ``timestamp`` (event time) and the timer to arm next; ``user``
        is updated in place."""
        if user is None:
            return [], []
        if user.timer_ms and timestamp >= user.timer_ms:
            user.timer_ms = 0  # the armed timer fired
        fired = profile.advance_time(user, timestamp, self.cfg)
        return fired, self.arm(user)


# --- item ------------------------------------------------------------------------------


@dataclass(slots=True)
class ItemResult:
    item: items.ItemState | None
    neighbors: covisitation.Neighbors | None
    item_changed: bool = False
    neighbors_changed: bool = False
    row: FeatureUpdate | None = None
    # The item half of the online MF learnt this event: the item's new factors, for the
    # ``item_cf`` row and the feed back to the user operators.
    learned: bool = False
    # Only the item's cart record changed (price_drop rules): the state is stored, no
    # row is rendered.
    state_changed: bool = False
    # price_drop triggers for users with the item in a cart (flink_jobs/price_drop.py).
    triggers: list[Trigger] = field(default_factory=list)


class ItemStep:
    """Keyed by item: popularity windows, trending score, co-visitation neighbours.

    Edges only update the neighbours; the item's row (with them) goes out on the item's
    own next event, so co-visitation adds no rows to the changelog.
    """

    def __init__(
        self,
        cfg: FeatureSettings,
        learning_cfg: LearningSettings | None = None,
        learner: learning.LearnerConfig | None = None,
    ) -> None:
        self.half_life_s = cfg.trending_half_life_s
        self.max_contexts = cfg.context.max_per_item
        learning_cfg = learning_cfg or LearningSettings()
        self.covisit = covisitation.CoVisitConfig.from_settings(learning_cfg)
        self.cf = CFStep(learning_cfg, learner)
        self.recent_users = self.cf.new_recent_users()
        self.price_rules = price_drop.price_drop_rules(load_trigger_rules(cfg.triggers))

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
        if self.price_rules:
            result.triggers = price_drop.price_drops(state.carts, event, self.price_rules)
            price = event.price or state.price
            if price_drop.track_cart(state.carts, event, price) or result.triggers:
                result.item = state
                result.state_changed = True
        if items.apply_item_event(state, event, self.half_life_s, self.max_contexts):
            result.item = state
            result.item_changed = True
        if record.cf_weight > 0 and record.user_factors:
            if not result.item_changed:  # a new row (its factors): a newer version
                state.version_us = next_version_us(event.event_time_ms, state.version_us)
            self.cf.learn_item(self.recent_users, state, record)
            result.item = state
            result.item_changed = result.learned = True
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

    def cf_row(self, item: items.ItemState) -> FeatureUpdate:
        return self.cf.item_row(item)


# --- collaborative filtering -----------------------------------------------------------


class CFStep:
    """The online matrix factorisation, partitioned by key (``flink_jobs/learning.py``):
    the user half runs in the user step (factors in the user's state), the item half in
    the item step (factors in the item's state); item factors return to the user side
    through the feed (``flink_jobs/item_factor_feed.py``). Each half emits its key's
    ``user_cf`` / ``item_cf`` row, versioned like the key's other rows."""

    def __init__(
        self, cfg: LearningSettings, learner: learning.LearnerConfig | None = None
    ) -> None:
        # An explicit learner config (the offline evaluation sweeps them) wins.
        self.learner_cfg = learner or learning.LearnerConfig.from_settings(cfg)
        self.prequential_every = cfg.prequential_every

    def new_known_items(self) -> learning.KnownItems:
        return learning.KnownItems(self.learner_cfg)

    def new_recent_users(self) -> learning.RecentUsers:
        return learning.RecentUsers(self.learner_cfg)

    def new_monitor(self) -> PrequentialMonitor:
        return PrequentialMonitor(every=self.prequential_every)

    @staticmethod
    def weight(event: Event) -> float:
        """The event's learning weight: > 0 for an interaction the model learns."""
        return learning.interaction_weight(event.event_type, learning.rating_of(event))

    @staticmethod
    def learns(event: Event) -> bool:
        return CFStep.weight(event) > 0

    def user_vector(self, user: profile.UserState) -> np.ndarray:
        if user.cf_factors:
            return from_bytes(user.cf_factors)
        return learning.init_vector(user.user_id, "u", self.learner_cfg)

    def learn_user(
        self,
        known: learning.KnownItems,
        quality: PrequentialMonitor,
        user: profile.UserState,
        event: Event,
    ) -> bytes:
        """Evaluate (prequential) and learn the user's side of ``event``, in ``user``;
        returns the factors the user had before, for the item's side."""
        cfg = self.learner_cfg
        p = self.user_vector(user)
        before = to_bytes(p)
        if user.cf_factors:  # a user seen before: the model can be judged on them
            quality.evaluate_vector(p, known.index.get(event.item_id), known.matrix)
        weight = min(self.weight(event), cfg.max_weight) ** cfg.weight_power
        learning.learn_user_half(
            p, known.vector(event.item_id), known.negatives(event.item_id), weight, cfg
        )
        user.cf_factors = to_bytes(p)
        return before

    def learn_item(
        self, recent: learning.RecentUsers, item: items.ItemState, record: ItemEvent
    ) -> None:
        """The item's side of the interaction ``record``, in ``item``."""
        cfg = self.learner_cfg
        q = (
            from_bytes(item.cf_factors)
            if item.cf_factors
            else learning.init_vector(item.item_id, "i", cfg)
        )
        user = from_bytes(record.user_factors)
        weight = min(record.cf_weight, cfg.max_weight) ** cfg.weight_power
        learning.learn_item_half(q, user, recent.sample(), weight, cfg)
        recent.add(user)
        item.cf_factors = to_bytes(q)

    @staticmethod
    def user_row(user: profile.UserState) -> FeatureUpdate:
        factors = from_bytes(user.cf_factors).tolist()
        return FeatureUpdate(USER_CF, user.user_id, user.version_us, {"cf_vector": factors})

    @staticmethod
    def item_row(item: items.ItemState) -> FeatureUpdate:
        factors = from_bytes(item.cf_factors).tolist()
        return FeatureUpdate(ITEM_CF, item.item_id, item.version_us, {"cf_vector": factors})
