"""Per-user state and its transitions (pure): the heart of the user-feature job.

``UserState`` is what the Flink job keeps per user (one pickled value). ``apply_event``
folds one event into it and returns the triggers it fired; ``advance_time`` is called
from event-time timers and closes sessions / detects abandoned carts;
``user_feature_row`` renders the state as the online feature row Feast stores.

Everything here is deterministic in (state, event): replaying the same events from a
restored checkpoint recomputes the same rows, which is what makes the writes
idempotent.
"""

from __future__ import annotations

import copyreg
import operator
from dataclasses import dataclass, field
from typing import Any, cast

from flink_jobs import impressions as impressions_mod
from flink_jobs import sessions as sessions_mod
from flink_jobs import windows
from flink_jobs.covisitation import History
from flink_jobs.dedup import SeenIds
from flink_jobs.impressions import Impression, ImpressionLog
from flink_jobs.sessions import Session, Sessions, new_sessions
from flink_jobs.triggers import TriggerRules
from personalization.compact_pickle import compact_pickle
from personalization.decay import decay_factor
from personalization.decimals import rounded, rounded_all
from personalization.events import (
    ADD_TO_CART,
    CLICK,
    CONSENT,
    CONSENT_PROPERTY,
    DWELL,
    FAVORITE,
    PAGE_VIEW,
    PRODUCT_VIEW,
    PURCHASE,
    RATING,
    REMOVE_FROM_CART,
    Event,
)
from personalization.feature_updates import next_version_us
from personalization.ranked import by_weight
from personalization.segments import DEFAULT_RULES_FILE, SegmentRule, evaluate, load_rules
from personalization.settings import FeatureSettings
from personalization.triggers import Trigger

# Event kinds counted over 5 min / 1 h / 24 h windows.
COUNTED_TYPES = (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)
WINDOW_SPECS = windows.window_specs()

# How much an event says about interest in its category.
INTEREST_WEIGHTS = {
    PAGE_VIEW: 0.5,
    PRODUCT_VIEW: 1.0,
    CLICK: 1.0,
    DWELL: 0.5,
    FAVORITE: 2.0,
    RATING: 2.0,
    ADD_TO_CART: 3.0,
    PURCHASE: 5.0,
}
# What makes an item one of the user's recent items (the anchors of co-visitation in
# serving): a view, a click, or a rating (a MovieLens user only rates what they watched).
VIEW_TYPES = frozenset({PRODUCT_VIEW, CLICK, RATING})
CART_TYPES = frozenset({ADD_TO_CART, REMOVE_FROM_CART, PURCHASE})
DEMOGRAPHIC_KEYS = ("age_band", "gender", "occupation")


@compact_pickle
@dataclass(slots=True)
class UserState:
    user_id: str
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    events_total: int = 0
    # event type -> window name -> {bucket index: count}
    window_buckets: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    # Sessions (gap-based, event time, independent of arrival order).
    sessions: Sessions = field(default_factory=new_sessions)
    # Decayed interest: category -> score as of ``interest_ref_ms``.
    interests: dict[str, float] = field(default_factory=dict)
    interest_ref_ms: int = 0
    recent_items: list[str] = field(default_factory=list)  # newest first, distinct
    cart: dict[str, int] = field(default_factory=dict)  # item -> quantity
    # item -> event time of its latest cart add / its latest removal (purchase or
    # remove): whichever is later wins, so the cart does not depend on arrival order.
    cart_added_ms: dict[str, int] = field(default_factory=dict)
    cart_removed_ms: dict[str, int] = field(default_factory=dict)
    cart_activity_ms: int = 0
    # Unused since trigger rules moved to the rule file (their bookkeeping is in
    # ``rule_state``); kept in place so keyed state of older jobs restores (compact_pickle
    # reads fields by position).
    cart_abandon_fired: bool = False
    purchased_items: list[str] = field(default_factory=list)  # newest first, distinct
    purchase_count: int = 0
    monetary: float = 0.0
    last_purchase_ms: int = 0
    last_device: str = ""
    last_country: str = ""
    demographics: dict[str, str] = field(default_factory=dict)
    # Unused, as cart_abandon_fired above (browse_intent's bookkeeping before rule files).
    recent_views: list[tuple[int, str, str]] = field(default_factory=list)
    browse_fired_ms: int = -1
    # Dedup: hashes of recent event ids with their event times, bounded by horizon and
    # count (flink_jobs/dedup.py; states written before it hold an {id: time} dict).
    seen_ids: SeenIds = field(default_factory=SeenIds)
    # Monotonic row version (µs) so Feast never skips a newer row at an equal time.
    version_us: int = 0
    # "granted" or "denied" (personalization consent, see personalization/privacy.py).
    consent: str = "granted"
    # The user's last interacted items, for co-visitation edges (flink_jobs/covisitation.py).
    covisit: History = field(default_factory=History)
    # What Recommend showed the user (frequency capping and fatigue).
    impressions: ImpressionLog = field(default_factory=ImpressionLog)
    # The user's CF factors (float32 bytes; empty until the first learnt interaction):
    # the user half of the partitioned online MF (flink_jobs/learning.py). Appended last:
    # older states load with it empty (compact_pickle).
    cf_factors: bytes = b""
    # The event-time timer armed for this user (0: none): a new one is armed only when
    # something is due before it, since each registration and each firing is a call
    # between the JVM and Python (flink_jobs/steps.py, UserStep.arm).
    timer_ms: int = 0
    # Trigger rules' bookkeeping: rule name -> [definition fingerprint, last fired, ...]
    # (flink_jobs/trigger_rule.py). Keyed state, so it survives restarts; a rule whose
    # definition changed starts afresh, the others keep theirs.
    rule_state: dict[str, list[Any]] = field(default_factory=dict)
    # Streaming clustering (flink_jobs/clustering.py): (cluster id, distance to its
    # centroid, events_total when assigned); id -1 = not clustered yet.
    cluster: tuple[int, float, int] = (-1, 0.0, 0)
    # When the user is active: events per hour of the day (UTC; events carry no time
    # zone), 24 counts once the first event came, and how many fell on a weekend.
    hour_counts: list[int] = field(default_factory=list)
    weekend_events: int = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_user_state(self)


# --- pickling --------------------------------------------------------------------------
# The job pickles a user's state on every event that changes it (PyFlink's ValueState
# takes pickled bytes). Pickled as objects, each nested class (sessions, every session,
# seen ids, co-visitation history, impressions) costs a Python-level reduce; flattened to
# their compact_pickle values, the state is one Python call and then plain lists, dicts
# and bytes for the C pickler: about half the time (`bench ingest`'s profile: the user
# state's pickling was ~10 % of the job's Python time) and ~13 % fewer bytes.
#
# Checkpoints name ``load_user_state`` (module and name): keep both. States pickled as
# objects (before this layout) still load, through the classes' ``__setstate__``.

_USER_FIELDS: tuple[str, ...] = UserState.__slots__  # type: ignore[attr-defined]
_user_values = operator.attrgetter(*_USER_FIELDS)
_SESSIONS = _USER_FIELDS.index("sessions")
_SEEN_IDS = _USER_FIELDS.index("seen_ids")
_COVISIT = _USER_FIELDS.index("covisit")
_IMPRESSIONS = _USER_FIELDS.index("impressions")
FLAT_LAYOUT = 1


def _reduce_user_state(state: UserState) -> tuple[Any, ...]:
    values = list(_user_values(state))
    sessions = values[_SESSIONS]
    if not (
        type(sessions) is Sessions
        and type(values[_SEEN_IDS]) is SeenIds
        and type(values[_COVISIT]) is History
        and type(values[_IMPRESSIONS]) is ImpressionLog
        and all(type(s) is Session for s in sessions.kept)
    ):
        # A form this layout does not cover (seen ids still the {id: time} dict of an
        # old checkpoint): pickled as Python would, nested objects and all.
        return copyreg.__newobj__, (UserState,), state.__getstate__()  # type: ignore[attr-defined]
    flat_sessions = cast(list[Any], sessions.__getstate__())
    flat_sessions[0] = [s.__getstate__() for s in sessions.kept]
    values[_SESSIONS] = flat_sessions
    values[_SEEN_IDS] = values[_SEEN_IDS].__getstate__()
    values[_COVISIT] = values[_COVISIT].__getstate__()
    values[_IMPRESSIONS] = values[_IMPRESSIONS].__getstate__()
    return load_user_state, (FLAT_LAYOUT, values)


def _restored(cls: type, state: Any) -> Any:
    obj: Any = object.__new__(cls)  # as unpickling does: no __init__
    obj.__setstate__(state)
    return obj


def load_user_state(layout: int, flat: list[Any]) -> UserState:
    """A user's state from :func:`_reduce_user_state`'s values (the name is in checkpoints)."""
    if layout != FLAT_LAYOUT:
        raise ValueError(f"user state: unknown pickle layout {layout}")
    values = list(flat)
    sessions = list(values[_SESSIONS])
    sessions[0] = [_restored(Session, s) for s in sessions[0]]
    values[_SESSIONS] = _restored(Sessions, sessions)
    values[_SEEN_IDS] = _restored(SeenIds, values[_SEEN_IDS])
    values[_COVISIT] = _restored(History, values[_COVISIT])
    values[_IMPRESSIONS] = _restored(ImpressionLog, values[_IMPRESSIONS])
    return _restored(UserState, values)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool
    triggers: list[Trigger]
    # The user has withdrawn consent: the event changed nothing and must not be used.
    opted_out: bool = False

    @property
    def changed(self) -> bool:
        return not (self.duplicate or self.opted_out)


def new_state(user_id: str, consent: str = "granted") -> UserState:
    return UserState(user_id=user_id, consent=consent)


def _apply_consent(state: UserState, event: Event) -> None:
    """A consent change. Withdrawing it forgets all behaviour kept so far."""
    consent = event.properties.get(CONSENT_PROPERTY, state.consent)
    if consent == "denied":
        kept = new_state(state.user_id, consent="denied")
        kept.seen_ids = state.seen_ids
        for name in UserState.__slots__:  # type: ignore[attr-defined]
            setattr(state, name, getattr(kept, name))
    state.consent = consent


# --- dedup ---------------------------------------------------------------------------


def _seen_ids(state: UserState) -> SeenIds:
    seen = state.seen_ids
    if isinstance(seen, dict):  # keyed state from before SeenIds (a checkpoint)
        seen = state.seen_ids = SeenIds.from_dict(seen)
    return seen


def is_duplicate(state: UserState, event: Event | Impression, cfg: FeatureSettings) -> bool:
    return event.event_id in _seen_ids(state)


def remember_id(state: UserState, event: Event | Impression, cfg: FeatureSettings) -> None:
    t = event.time_ms if isinstance(event, Impression) else event.event_time_ms
    horizon = max(state.last_seen_ms, t) - cfg.dedup_horizon_s * 1000
    _seen_ids(state).add(event.event_id, t, horizon, cfg.dedup_max_ids)


# --- transitions ---------------------------------------------------------------------


def apply_event(state: UserState, event: Event, cfg: FeatureSettings) -> Outcome:
    """Fold one event into the user's state; return the triggers it fired."""
    if is_duplicate(state, event, cfg):
        return Outcome(duplicate=True, triggers=[])
    if event.event_type == CONSENT:
        remember_id(state, event, cfg)
        version = state.version_us
        _apply_consent(state, event)
        state.version_us = next_version_us(event.event_time_ms, version)
        return Outcome(duplicate=False, triggers=[])
    if state.consent == "denied":
        return Outcome(duplicate=False, triggers=[], opted_out=True)
    remember_id(state, event, cfg)
    rules = TriggerRules(cfg)
    fired: list[Trigger] = []
    t = event.event_time_ms

    # Whatever was due before this event (sessions that ended, a cart that went idle)
    # is decided first, exactly as the timers would have: whichever comes first, the
    # outcome and its event time are the same.
    fired.extend(advance_time(state, t, cfg))

    # The earliest event, whatever arrives first (topics interleave).
    state.first_seen_ms = t if state.events_total == 0 else min(state.first_seen_ms, t)
    state.events_total += 1
    reference = max(state.last_seen_ms, t)

    _count_windows(state, event, reference)
    _update_time_of_day(state, t)
    _update_session(state, event, cfg)
    _update_interest(state, event, cfg)
    _update_items(state, event, cfg)
    if event.device:
        state.last_device = event.device
    if event.country:
        state.last_country = event.country
    for key in DEMOGRAPHIC_KEYS:
        value = event.properties.get(key)
        if value:
            state.demographics[key] = value

    state.last_seen_ms = reference
    state.version_us = next_version_us(reference, state.version_us)

    fired.extend(rules.on_event(state, event))
    return Outcome(duplicate=False, triggers=fired)


def apply_impression(state: UserState, impression: Impression, cfg: FeatureSettings) -> Outcome:
    """Count what Recommend showed the user; nothing is kept for an opted-out user."""
    if is_duplicate(state, impression, cfg):
        return Outcome(duplicate=True, triggers=[])
    if state.consent == "denied":
        return Outcome(duplicate=False, triggers=[], opted_out=True)
    remember_id(state, impression, cfg)
    impressions_mod.record(
        state.impressions,
        impression,
        cfg.impression_window_s * 1000,
        cfg.max_impression_items,
        cfg.max_impression_categories,
    )
    state.version_us = next_version_us(impression.time_ms, state.version_us)
    return Outcome(duplicate=False, triggers=[])


def advance_time(state: UserState, now_ms: int, cfg: FeatureSettings) -> list[Trigger]:
    """Called when event time (the watermark) reaches ``now_ms``: timers land here."""
    rules = TriggerRules(cfg)
    fired: list[Trigger] = []
    for session in sessions_mod.ended_sessions(state.sessions, now_ms, cfg.session_gap_s * 1000):
        fired.extend(rules.on_session_end(state, session))
    fired.extend(rules.on_time(state, now_ms))
    return fired


def due_timers(state: UserState, cfg: FeatureSettings) -> list[int]:
    """Event times at which ``advance_time`` has something to decide."""
    due = []
    session_end = sessions_mod.next_end(state.sessions, cfg.session_gap_s * 1000)
    if session_end is not None:
        due.append(session_end)
    due.extend(TriggerRules(cfg).due(state))
    return due


def _count_windows(state: UserState, event: Event, reference: int) -> None:
    if event.event_type in COUNTED_TYPES:
        per_type = state.window_buckets.setdefault(event.event_type, {})
        for spec in WINDOW_SPECS:
            windows.add(per_type.setdefault(spec.name, {}), spec, event.event_time_ms, reference)
    if reference > state.last_seen_ms:
        for per_type in state.window_buckets.values():
            for spec in WINDOW_SPECS:
                buckets = per_type.get(spec.name)
                if buckets:
                    windows.expire(buckets, spec, reference)


HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _update_time_of_day(state: UserState, t: int) -> None:
    if not state.hour_counts:
        state.hour_counts = [0] * 24
    state.hour_counts[(t // HOUR_MS) % 24] += 1
    # Day 0 of the epoch (1970-01-01) was a Thursday: Monday = 0, Saturday = 5.
    if ((t // DAY_MS) + 3) % 7 >= 5:
        state.weekend_events += 1


def peak_hour(state: UserState) -> int:
    """The UTC hour of the day the user was most active in (the earliest on a tie); -1
    before any event."""
    counts = state.hour_counts
    if not counts or not any(counts):
        return -1
    return counts.index(max(counts))


def weekend_share(state: UserState) -> float:
    """The share of the user's events that fell on a Saturday or Sunday (UTC)."""
    counted = sum(state.hour_counts)
    return round(state.weekend_events / counted, 4) if counted else 0.0


def _update_session(state: UserState, event: Event, cfg: FeatureSettings) -> None:
    sessions_mod.add_event(
        state.sessions,
        event.event_time_ms,
        cfg.session_gap_s * 1000,
        converted=event.event_type in (ADD_TO_CART, PURCHASE),
        entry=event.item_id or event.page,
    )


def _update_interest(state: UserState, event: Event, cfg: FeatureSettings) -> None:
    weight = INTEREST_WEIGHTS.get(event.event_type, 0.0)
    if not event.category or weight <= 0:
        return
    t = event.event_time_ms
    if t > state.interest_ref_ms:
        if state.interests:
            factor = decay_factor(t - state.interest_ref_ms, cfg.interest_half_life_s)
            for category in state.interests:
                state.interests[category] *= factor
        state.interest_ref_ms = t
    else:  # a late event counts with the decay it would have had by now
        weight *= decay_factor(state.interest_ref_ms - t, cfg.interest_half_life_s)
    state.interests[event.category] = state.interests.get(event.category, 0.0) + weight
    if len(state.interests) > cfg.max_interest_categories:
        weakest = min(state.interests, key=lambda c: (state.interests[c], c))
        del state.interests[weakest]


def _push_recent(items: list[str], item: str, limit: int) -> None:
    if item in items:
        items.remove(item)
    items.insert(0, item)
    del items[limit:]


def _drop_from_cart(state: UserState, item: str, t: int) -> None:
    state.cart.pop(item, None)
    state.cart_added_ms.pop(item, None)
    state.cart_removed_ms[item] = max(t, state.cart_removed_ms.get(item, t))
    if len(state.cart_removed_ms) > 50:  # only recent removals can meet a late add
        del state.cart_removed_ms[min(state.cart_removed_ms, key=state.cart_removed_ms.__getitem__)]


def _update_items(state: UserState, event: Event, cfg: FeatureSettings) -> None:
    kind, item = event.event_type, event.item_id
    if kind in VIEW_TYPES:
        _push_recent(state.recent_items, item, cfg.recent_items)
    if kind in CART_TYPES:
        state.cart_activity_ms = max(state.cart_activity_ms, event.event_time_ms)
    t = event.event_time_ms
    if kind == ADD_TO_CART:
        if t >= state.cart_removed_ms.get(item, -1):
            state.cart[item] = state.cart.get(item, 0) + event.quantity
            state.cart_added_ms[item] = max(t, state.cart_added_ms.get(item, t))
            if len(state.cart) > cfg.max_cart_items:
                oldest = min(state.cart_added_ms, key=state.cart_added_ms.__getitem__)
                _drop_from_cart(state, oldest, t)
    elif kind == REMOVE_FROM_CART:
        if t >= state.cart_added_ms.get(item, -1):
            left = state.cart.get(item, 0) - event.quantity
            if left > 0:
                state.cart[item] = left
            else:
                _drop_from_cart(state, item, t)
    elif kind == PURCHASE:
        if t >= state.cart_added_ms.get(item, -1):
            _drop_from_cart(state, item, t)
        _push_recent(state.purchased_items, item, cfg.max_purchased_items)
        state.purchase_count += 1
        state.monetary += event.price * event.quantity
        state.last_purchase_ms = max(state.last_purchase_ms, event.event_time_ms)


# --- features ------------------------------------------------------------------------


def window_counts(state: UserState) -> dict[str, int]:
    """``{product_view_5m: n, ..., purchase_24h: n}`` as of the user's last event."""
    out = {}
    for kind in COUNTED_TYPES:
        per_type = state.window_buckets.get(kind, {})
        for spec in WINDOW_SPECS:
            out[f"{kind}_{spec.name}"] = windows.total(
                per_type.get(spec.name, {}), spec, state.last_seen_ms
            )
    return out


def top_interests(state: UserState, limit: int | None = None) -> list[tuple[str, float]]:
    return by_weight(state.interests, limit or None)


def segments(
    state: UserState,
    counts: dict[str, int],
    cfg: FeatureSettings,
    rules: tuple[SegmentRule, ...] | None = None,
) -> list[str]:
    """Rule segments (``personalization/segments.py``): the rules of ``segments.rules_file``
    that hold for the user (default: the seven rules of ``personalization/segments.yaml``)."""
    measures: dict[str, float] = {
        "sessions": state.sessions.count,
        "purchases": state.purchase_count,
        "monetary": state.monetary,
        "events": state.events_total,
        "cart_items": len(state.cart),
    }
    measures.update(counts)
    return evaluate(
        load_rules(DEFAULT_RULES_FILE) if rules is None else rules, measures, state.last_device
    )


def user_feature_row(
    state: UserState, cfg: FeatureSettings, rules: tuple[SegmentRule, ...] | None = None
) -> dict[str, Any]:
    """The ``user_profile`` feature view row (names match feature_repo/features.py)."""
    counts = window_counts(state)
    interests = top_interests(state)
    current = state.sessions.current
    row: dict[str, Any] = dict(counts)
    row.update(
        session_count=state.sessions.count,
        session_events=current.events if current else 0,
        session_duration_s=current.duration_ms // 1000 if current else 0,
        interest_categories=[c for c, _ in interests],
        interest_scores=rounded_all(s for _, s in interests),
        interest_ref_ms=state.interest_ref_ms,
        recent_items=list(state.recent_items),
        cart_items=list(state.cart),
        purchased_items=list(state.purchased_items),
        first_seen_ms=state.first_seen_ms,
        last_seen_ms=state.last_seen_ms,
        last_purchase_ms=state.last_purchase_ms,
        frequency=state.purchase_count,
        monetary=rounded(state.monetary, 4),
        events_total=state.events_total,
        segments=segments(state, counts, cfg, rules),
        cluster_id=state.cluster[0],
        cluster_distance=state.cluster[1],
        peak_hour=peak_hour(state),
        weekend_share=weekend_share(state),
        last_device=state.last_device,
        last_country=state.last_country,
        age_band=state.demographics.get("age_band", ""),
        gender=state.demographics.get("gender", ""),
        consent=state.consent,
    )
    row.update(impressions_mod.row_fields(state.impressions))
    return row
