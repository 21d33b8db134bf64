"""PyFlink functions: thin adapters between Flink's runtime and the pure logic.

Kept apart from the job wiring so the pure modules stay importable without a JVM,
and so a reader sees in one page what runs per record inside Flink.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor

from flink_jobs import attribution, items, profile
from flink_jobs.feature_updates import FeatureUpdate
from personalization.events import (
    ERASURE,
    Event,
    Rejection,
    ValidationLimits,
    dead_letter,
    parse_event,
)
from personalization.privacy import pseudonymizer
from personalization.settings import FeatureSettings, PrivacySettings

DLQ_TAG = OutputTag("dead-letters", Types.STRING())
TRIGGER_TAG = OutputTag("triggers", Types.STRING())
ITEM_EVENT_TAG = OutputTag("item-events", Types.PICKLED_BYTE_ARRAY())
# Accepted events that name a recommendation id (clicks etc. after a Recommend answer).
OUTCOME_TAG = OutputTag("rec-outcomes", Types.PICKLED_BYTE_ARRAY())


class ParseEvents(ProcessFunction):
    """Raw Kafka value -> ``Event``; refused payloads go to the DLQ side output.

    User ids are pseudonymised here (when a secret is configured), before any state or
    store sees them.
    """

    def __init__(self, cfg: FeatureSettings, privacy: PrivacySettings) -> None:
        self.limits = ValidationLimits.from_settings(cfg)
        self.hmac_secret = privacy.hmac_secret

    def open(self, runtime_context: RuntimeContext) -> None:
        self.pseudonym = pseudonymizer(self.hmac_secret)

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        now_ms = int(time.time() * 1000)
        parsed = parse_event(value, now_ms=now_ms, limits=self.limits)
        if isinstance(parsed, Rejection):
            yield DLQ_TAG, dead_letter(value, parsed, source="kafka", now_ms=now_ms)
        elif self.hmac_secret:
            yield dataclasses.replace(parsed, user_id=self.pseudonym(parsed.user_id))
        else:
            yield parsed


class EventTimeAssigner(TimestampAssigner):
    def extract_timestamp(self, value: Event, record_timestamp: int) -> int:
        return value.event_time_ms


class UserFeatures(KeyedProcessFunction):
    """Keyed by user: dedup, profile update, triggers, feature rows.

    Emits the user's full feature row after every accepted event (main output),
    trigger records (side output) and each accepted item event for the item branch
    (side output, so items see the same deduplicated stream).
    """

    def __init__(self, cfg: FeatureSettings, privacy: PrivacySettings) -> None:
        self.cfg = cfg
        self.default_consent = privacy.default_consent
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, event: Event, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        previous = self.state.value()
        if event.event_type == ERASURE:
            # Forget everything kept about the user; the writer erases the store entry.
            self.state.clear()
            version = max(event.event_time_ms * 1000, (previous.version_us if previous else 0) + 1)
            yield FeatureUpdate("user_profile", event.user_id, version, {}, erase=True).to_json()
            return
        user = previous or profile.new_state(event.user_id, self.default_consent)
        outcome = profile.apply_event(user, event, self.cfg)
        if not outcome.changed:
            return
        self.state.update(user)
        for trigger in outcome.triggers:
            yield TRIGGER_TAG, trigger.to_json()
        timers = ctx.timer_service()
        for due in profile.due_timers(user, self.cfg):
            timers.register_event_time_timer(due)
        yield FeatureUpdate(
            "user_profile", user.user_id, user.version_us, profile.user_feature_row(user, self.cfg)
        ).to_json()
        if event.item_id and user.consent != "denied":
            yield ITEM_EVENT_TAG, event
            if attribution.outcome_of(event) is not None:
                yield OUTCOME_TAG, event

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        user = self.state.value()
        if user is None:
            return
        fired = profile.advance_time(user, timestamp, self.cfg)
        if fired:
            self.state.update(user)
            for trigger in fired:
                yield TRIGGER_TAG, trigger.to_json()


class ItemFeatures(KeyedProcessFunction):
    """Keyed by item: popularity windows and trending score."""

    def __init__(self, cfg: FeatureSettings) -> None:
        self.half_life_s = cfg.trending_half_life_s
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("item", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, event: Event, ctx: KeyedProcessFunction.Context) -> Iterator[str]:
        item = self.state.value() or items.ItemState(event.item_id)
        if items.apply_item_event(item, event, self.half_life_s):
            self.state.update(item)
            yield FeatureUpdate(
                "item_stats", item.item_id, item.version_us, items.item_feature_row(item)
            ).to_json()


class AttributionJoin(KeyedCoProcessFunction):
    """Keyed by recommendation id: exposures (input 1) joined with outcomes (input 2).

    One attribution record per exposure once its window has passed in event time.
    """

    def __init__(self, cfg: FeatureSettings) -> None:
        self.window_ms = cfg.attribution_window_s * 1000
        self.wait_ms = cfg.attribution_wait_for_exposure_s * 1000
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("attribution", Types.PICKLED_BYTE_ARRAY())
        )

    def _update(self, ctx: Any, state: attribution.Attribution) -> None:
        self.state.update(state)
        due = attribution.close_time(state, self.window_ms, self.wait_ms)
        if due is not None:
            ctx.timer_service().register_event_time_timer(due)

    def process_element1(self, exposure: attribution.Exposure, ctx: Any) -> Iterator[str]:
        state = self.state.value() or attribution.Attribution(exposure.rec_id)
        attribution.add_exposure(state, exposure, self.window_ms)
        self._update(ctx, state)
        return iter(())

    def process_element2(self, event: Event, ctx: Any) -> Iterator[str]:
        rec_id = event.properties.get(attribution.REC_ID_PROPERTY, "")
        state = self.state.value() or attribution.Attribution(rec_id)
        attribution.add_outcome(state, event, self.window_ms)
        self._update(ctx, state)
        return iter(())

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[str]:
        state = self.state.value()
        if state is None:
            return
        due = attribution.close_time(state, self.window_ms, self.wait_ms)
        if due is None or timestamp < due:
            return  # an earlier timer; the record is not final yet
        self.state.clear()
        if state.exposure is not None:
            yield state.to_json()


class ParseExposures(ProcessFunction):
    """Exposure records from serving; malformed ones go to the DLQ like bad events."""

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        exposure = attribution.parse_exposure(value)
        if exposure is None:
            now_ms = int(time.time() * 1000)
            rejection = Rejection("invalid_exposure", "not an exposure record")
            yield DLQ_TAG, dead_letter(value, rejection, source="exposures", now_ms=now_ms)
        else:
            yield exposure


class ExposureTime(TimestampAssigner):
    def extract_timestamp(self, value: attribution.Exposure, record_timestamp: int) -> int:
        return value.time_ms
