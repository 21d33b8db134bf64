"""PyFlink functions: thin adapters between Flink's runtime and the pure logic.

Kept apart from the job wiring so the pure modules stay importable without a JVM,
and so a reader sees in one page what runs per record inside Flink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    TimeDomain,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from flink_jobs import (
    attribution,
    exchanges,
    impressions,
    item_factor_feed,
    price_drop,
    propensity,
    steps,
    timer_side_outputs,
)
from flink_jobs.model_quality import PrequentialMonitor
from flink_jobs.row_schedule import RowSchedule
from flink_jobs.state_cache import CachedValueState
from flink_jobs.steps import CoVisitEdge, ItemEvent
from personalization import metrics
from personalization.catalog_records import parse_catalog_record
from personalization.events import (
    CONTROL_TYPES,
    Event,
    Rejection,
    dead_letter,
    topic_family,
)
from personalization.exposures import REC_ID_PROPERTY, Exposure, parse_exposure
from personalization.feature_updates import encode_record, model_version_update
from personalization.heap import observe_collections
from personalization.model_versions import ModelVersion
from personalization.settings import (
    FeatureSettings,
    LearningSettings,
    MetricsSettings,
    PrivacySettings,
    SegmentSettings,
    load_settings,
)

log = logging.getLogger(__name__)

DLQ_TAG = OutputTag("dead-letters", Types.STRING())
# The user operator's changelog records. Its triggers are its main output: PyFlink's
# embedded keyed co-process operator (a broadcast-connected keyed function) sends what
# on_timer yields to the main output even when it is a (tag, value) pair (a
# ClassCastException in the String serializer), and timers fire triggers.
USER_ROWS_TAG = OutputTag("user-rows", Types.STRING())
# Side outputs bound for a keyed exchange carry Row(key, record) (flink_jobs/exchanges.py).
# PyFlink's embedded operators send side-output records WITHOUT a timestamp (only the
# main output keeps the input's), so the item events carry their event time with them
# (``(Row(item, record), time)``): the item operator's main output, the item-factor
# feed, is stamped with it, and the feed's Kafka timestamps (its watermarks) are event
# time, never the broker's clock.
ITEM_EVENT_TAG = OutputTag("item-events", exchanges.timed_record(exchanges.KEYED_RECORD))
# Accepted events that name a recommendation id (clicks etc. after a Recommend answer).
OUTCOME_TAG = OutputTag("rec-outcomes", exchanges.KEYED_RECORD)
# Labelled shown items from the attribution join, for the propensity trainer.
EXAMPLE_TAG = OutputTag("propensity-examples", exchanges.KEYED_RECORD)
# Exposures as the user's impressions, from the exposure parser to the user operator
# (with their time: a side output drops the record's timestamp).
IMPRESSION_TAG = OutputTag("impressions", exchanges.timed_record(exchanges.KEYED_RECORD))

# The item operator's changelog records (its main output is the item-factor feed).
ITEM_ROWS_TAG = OutputTag("item-rows", Types.STRING())
# The item operator's triggers (price_drop rules: flink_jobs/price_drop.py).
ITEM_TRIGGERS_TAG = OutputTag("item-triggers", Types.STRING())
# The user operators' copy of the fed item factors: item id -> a feed record.
ITEM_FACTORS_STATE = MapStateDescriptor("item-factors", Types.STRING(), Types.STRING())

# The user operator reads the watermark (a call into the JVM) at most this often.
WATERMARK_SAMPLE_S = 0.5


def _key_of(ctx: Any) -> str:
    """The current key as a string (keys are ``Row(key)`` from ``exchanges.keyed``)."""
    key = ctx.get_current_key()
    return str(key[0] if isinstance(key, Row) else key)


def _metrics_settings(given: MetricsSettings | None) -> MetricsSettings:
    # Resolved where the operator is built (the submitter), then pickled with it.
    return given if given is not None else load_settings().metrics


def _start_job_metrics(cfg: MetricsSettings) -> metrics.JobMetrics:
    """The process's job metrics and its /metrics endpoint, started once per process (in
    thread mode all Python operators of a TaskManager share one interpreter)."""
    metrics.start_metrics_server(cfg.host, metrics.job_metrics_port(cfg), what="job metrics")
    observe_collections()
    return metrics.job_metrics()


class ParseEvents(ProcessFunction):
    """Raw Kafka value -> ``Row(user_id, Event)``, ready for the keyed exchange
    (``exchanges.keyed``); refused payloads go to the DLQ side output. The watermarks
    come with the records from the events table (flink_jobs/event_source.py).

    User ids are pseudonymised here (when a secret is configured), before any state or
    store sees them.
    """

    def __init__(
        self,
        cfg: FeatureSettings,
        privacy: PrivacySettings,
        metrics_cfg: MetricsSettings | None = None,
    ) -> None:
        self.cfg = cfg
        self.privacy = privacy
        self.metrics_cfg = _metrics_settings(metrics_cfg)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.step = steps.ParseStep(self.cfg, self.privacy)
        self.metrics = _start_job_metrics(self.metrics_cfg)
        self.event_counters: dict[str, Any] = {}

    def _count_event(self, event_type: str) -> None:
        counter = self.event_counters.get(event_type)
        if counter is None:
            family = "control" if event_type in CONTROL_TYPES else topic_family(event_type)
            counter = self.metrics.events.labels(family, event_type)
            self.event_counters[event_type] = counter
        counter.inc()

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        # ``Row(value)``: the events table's one column (flink_jobs/event_source.py).
        parsed = self.step(value[0], int(time.time() * 1000))
        if isinstance(parsed, tuple):
            rejection, record = parsed
            self.metrics.dead_letters.labels(rejection.reason).inc()
            yield DLQ_TAG, record
            return
        self._count_event(parsed.event_type)
        # The watermark comes from the events table (its own reading of the same time);
        # the state and timers use parsed.event_time_ms.
        yield Row(parsed.user_id, parsed)


class ParseCatalogPrices(ProcessFunction):
    """Catalog records -> ``(Row(item_id, ItemEvent), time)`` for the item operator: the
    prices of the item catalog, so a price cut fires the price_drop rules at once
    (flink_jobs/price_drop.py). Only in a job whose rule file has such a rule. Refused
    records are skipped: the writer's catalog consumer dead-letters them already."""

    def __init__(self, max_future_skew_s: int) -> None:
        self.max_future_skew_ms = max_future_skew_s * 1000

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        now_ms = int(time.time() * 1000)
        item = parse_catalog_record(
            value, now_ms=now_ms, max_future_skew_ms=self.max_future_skew_ms
        )
        if isinstance(item, Rejection):
            return
        event = price_drop.catalog_price_event(item, now_ms)
        if event is not None:
            yield Row(event.item_id, ItemEvent(event)), event.event_time_ms


class _QualityReporting:
    """Prequential evaluation (done by the step before each update), published as model
    metrics at most once a second."""

    quality: PrequentialMonitor
    model_metrics: Any
    next_report: float

    def _report_quality(self) -> None:
        if self.quality.drift_detected:
            log.warning(
                "cf: drift in prequential hit rate (now %.3f after %d evaluations)",
                self.quality.hit_rate,
                self.quality.evaluated,
            )
            self.model_metrics.set_drift("cf", "adwin", self.quality.hit_rate, alarm=True)
        now = time.monotonic()
        if now >= self.next_report and self.quality.evaluated:
            self.next_report = now + 1.0
            self.model_metrics.set_prequential(
                "cf", "sampled_hit_rate_at_10", self.quality.hit_rate
            )
            self.model_metrics.set_prequential("cf", "evaluated", self.quality.evaluated)
            self.model_metrics.set_drift("cf", "adwin", self.quality.hit_rate, alarm=False)


class UserFeatures(_QualityReporting, KeyedBroadcastProcessFunction):
    """Keyed by user: dedup, profile update, triggers, feature rows, the user half of the
    online MF (``UserStep``); the broadcast input is the item-factor feed.

    Emits trigger records (main output, see ``USER_ROWS_TAG``), the user's rows as one
    changelog record (side output) and each accepted item event for the item branch
    (side output, so items see the same deduplicated stream).

    A changed user's rows go at once when the user had none in the last
    ``features.user_rows_every_ms``; further changes in that interval are rendered once,
    from a processing-time timer, with the state as it is then (as the item operator
    does, ``flink_jobs/row_schedule.py``); erasures always go at once. The timer sends them to
    the side output itself (``flink_jobs/timer_side_outputs.py``: PyFlink does not route
    a keyed broadcast function's timer output); where that is not possible, or with the
    setting at 0, rows go per event.
    """

    def __init__(
        self,
        cfg: FeatureSettings,
        privacy: PrivacySettings,
        metrics_cfg: MetricsSettings | None = None,
        learning: LearningSettings | None = None,
        segments: SegmentSettings | None = None,
        *,
        state_cache_entries: int,  # settings.flink.state_cache_entries
    ) -> None:
        # Built on the client: the segment rules file is read and validated here, once,
        # and travels inside the pickled operator (TaskManagers need no copy).
        self.step = steps.UserStep(cfg, privacy, learning, segments=segments)
        self.metrics_cfg = _metrics_settings(metrics_cfg)
        self.state_cache_entries = state_cache_entries
        self.rows_every_ms = cfg.user_rows_every_ms
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        # Every path below either writes the user's state back or evicts it from the
        # cache (flink_jobs/state_cache.py): the steps change the object in place.
        self.state = CachedValueState(
            runtime_context.get_state(ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())),
            self.state_cache_entries,
        )
        self.metrics = _start_job_metrics(self.metrics_cfg)
        self.next_watermark_sample = 0.0
        # The fed item factors: a fresh cache per (re)start, filled from the broadcast
        # state (checkpointed) on the first record, then kept current by the feed.
        self.step.known_items = self.step.cf.new_known_items()
        self.step.quality = self.quality = self.step.cf.new_monitor()
        self.cache_loaded = False
        self.stored_at: dict[str, int] = {}  # item -> event time its factors were stored
        # The broadcast state's handle, taken once: ctx.get_broadcast_state builds a Java
        # state descriptor on every call (59 µs of the ~1,150 µs per event in
        # `bench ingest --py-spy`), and the backend hands back the same registered state
        # for the life of the operator (a restore opens a new one).
        self.factors_store: Any = None
        self.model_metrics = metrics.model_metrics()
        self.updates = self.model_metrics.updates.labels("cf")
        self.next_report = 0.0
        # Coalesced rows: decided on the first record, when the runtime's side-output
        # context can be found (a timer sends the rows through it).
        self.schedule: RowSchedule | None = None
        self.side_outputs: timer_side_outputs.TimerSideOutputs | None = None
        self.step.defer_rows = False
        self.rows_decided = False

    def _decide_rows(self) -> None:
        """Called from process_element's generator (see timer_side_outputs.find)."""
        self.rows_decided = True
        context = timer_side_outputs.find()
        if context is None:
            log.warning(
                "user features: no side-output context for timers in this runtime; "
                "user rows go per event (features.user_rows_every_ms ignored)"
            )
            return
        # Kept with the setting at 0 too: row timers restored from a checkpoint of a job
        # that deferred still render.
        self.side_outputs = timer_side_outputs.TimerSideOutputs(context)
        if self.rows_every_ms > 0:
            self.schedule = RowSchedule(self.rows_every_ms)
            self.step.defer_rows = True

    def _sample_watermark(self, ctx: Any) -> None:
        now = time.monotonic()
        if now >= self.next_watermark_sample:
            self.next_watermark_sample = now + WATERMARK_SAMPLE_S
            self.metrics.observe_watermark(ctx.timer_service().current_watermark())

    def _load_cache(self, ctx: Any) -> None:
        self.cache_loaded = True
        # items(), not values(): PyFlink's embedded values() calls a method the Java
        # broadcast state does not have (AttributeError on the PyJObject).
        for _, record in ctx.get_broadcast_state(ITEM_FACTORS_STATE).items():
            decoded = item_factor_feed.decode(record)
            if decoded is not None:
                self.step.on_item_factors(*decoded)
        log.info("user features: %d item factors from broadcast state", len(self.step.known_items))

    def process_broadcast_element(self, value: str, ctx: Any) -> None:
        decoded = item_factor_feed.decode(value)
        if decoded is None:
            return
        item_id, version, factors = decoded
        if not self.step.on_item_factors(item_id, version, factors):
            return  # older than what is held (a reordered or replayed feed)
        # Broadcast state is the restore copy: written at most every STORE_EVERY_MS of
        # event time per item (version_us is event time), since each write crosses into
        # the JVM. Every subtask gets every record (interleaved from the feed's partitions
        # in its own order), so their states hold the same items, each at a version no
        # more than that much apart: a rescale may keep any of them.
        t = version // 1000
        if t - self.stored_at.get(item_id, -item_factor_feed.STORE_EVERY_MS) >= (
            item_factor_feed.STORE_EVERY_MS
        ):
            self.stored_at[item_id] = t
            if self.factors_store is None:
                self.factors_store = ctx.get_broadcast_state(ITEM_FACTORS_STATE)
            self.factors_store.put(item_id, value)

    def process_element(self, event: Event | impressions.Impression, ctx: Any) -> Iterator[Any]:
        if not self.rows_decided:
            self._decide_rows()
        if not self.cache_loaded:
            self._load_cache(ctx)
        self._sample_watermark(ctx)
        user_id = event.user_id  # the key: the exchange keyed the record by it
        previous = self.state.value(user_id)
        if isinstance(event, impressions.Impression):
            result = self.step.on_impression(previous, event)
            if result.changed:
                self.metrics.impressions.inc()
        else:
            result = self.step.on_event(previous, event)
        if not result.changed:
            self.state.evict(user_id)  # not written: the object may differ from the state
            if result.duplicate:
                self.metrics.duplicates.inc()
            elif result.opted_out:
                self.metrics.opted_out.inc()
            return
        if result.state is None:
            self.state.clear(user_id)
        else:
            self.state.update(user_id, result.state)
            if self.schedule is not None:
                # Flink's processing time is the wall clock: no call into the JVM to read it.
                now, due = self.schedule.change(user_id, int(time.time() * 1000), result.learned)
                if due is not None:
                    ctx.timer_service().register_processing_time_timer(due)
                if now:  # no row of the user in the last interval: this one goes at once
                    result.rows += self.step.rows(result.state, result.learned)
        for trigger in result.triggers:
            self.metrics.triggers.labels(trigger.trigger).inc()
            yield trigger.to_json()
        if result.timers:
            timers = ctx.timer_service()
            for due in result.timers:
                timers.register_event_time_timer(due)
        if result.rows:
            yield USER_ROWS_TAG, encode_record(result.rows)
        if result.item_event is not None:
            item_event = result.item_event
            yield (
                ITEM_EVENT_TAG,
                (Row(item_event.item_id, item_event), item_event.event.event_time_ms),
            )
        if result.outcome is not None:
            outcome = result.outcome
            yield OUTCOME_TAG, Row(outcome.properties.get(REC_ID_PROPERTY, ""), outcome)
        if result.learned:
            self.updates.inc()
            self._report_quality()

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        # Event-time timers: sessions, retention, behavioural triggers; processing-time
        # timers: the coalesced rows (every_ms > 0 now, or in the job that checkpointed).
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._on_row_timer(_key_of(ctx), timestamp, ctx)
            return
        self._sample_watermark(ctx)
        user_id = _key_of(ctx)
        user = self.state.value(user_id)
        if user is None:
            return
        if self.step.expired(user, timestamp) is not None:
            # Inactive past privacy.retention_days: the keyed state goes (its pending
            # timers find nothing). No erasure row from here: this operator sends what
            # on_timer yields to its main output (see USER_ROWS_TAG), so the user's
            # Redis rows go by their key TTL, the same retention counted from the last
            # write; a user who comes back first starts from nothing (UserStep.expired).
            self.state.clear(user_id)
            self.metrics.expired_users.inc()
            return
        armed = user.timer_ms
        fired, timers = self.step.on_timer(user, timestamp)
        if fired or timers or user.timer_ms != armed:
            self.state.update(user_id, user)
        else:
            self.state.evict(user_id)
        if timers:
            service = ctx.timer_service()
            for due in timers:
                service.register_event_time_timer(due)
        for trigger in fired:
            self.metrics.triggers.labels(trigger.trigger).inc()
            yield trigger.to_json()

    def _on_row_timer(self, user_id: str, timestamp: int, ctx: Any) -> None:
        """The coalesced rows of the user, from its state now (a row timer fired)."""
        if self.side_outputs is None:
            if not self.rows_decided:
                # Restored, and no record yet to find the side outputs with: again later
                # (the timer is checkpointed until it has rendered).
                ctx.timer_service().register_processing_time_timer(
                    timestamp + max(self.rows_every_ms, 100)
                )
            # else: timers cannot send rows in this runtime; the user's next event does.
            return
        learned: bool | None = None  # not known (a timer of an earlier run)
        if self.schedule is not None:
            due = self.schedule.fire(user_id, timestamp)
            if due is None:
                return  # a newer timer of the user renders it
            learned = due.learned
        user = self.state.value(user_id)
        if user is None:  # erased or expired since: its erasure went at once
            return
        self.side_outputs.collect(USER_ROWS_TAG, encode_record(self.step.rows(user, learned)))


class ItemFeatures(KeyedProcessFunction):
    """Keyed by item: popularity windows, trending score, co-visitation neighbours and the
    item half of the online MF (``ItemStep``). A changed item's changelog record (its
    ``item_stats`` and ``item_cf`` rows) goes to the ``ITEM_ROWS_TAG`` side output at most
    once per ``features.item_rows_every_ms``, from a processing-time timer
    (``flink_jobs/row_schedule.py``); new factors are the main output, per event (the
    feed, stamped with the event's time). The
    neighbours are a state of their own: pickling them alone is much cheaper than the
    whole item state, and only events with links touch them."""

    def __init__(
        self,
        cfg: FeatureSettings,
        learning: LearningSettings | None = None,
        *,
        state_cache_entries: int,  # settings.flink.state_cache_entries
    ) -> None:
        self.step = steps.ItemStep(cfg, learning)
        self.rows_every_ms = cfg.item_rows_every_ms
        self.state_cache_entries = state_cache_entries
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        # Read caches (flink_jobs/state_cache.py): every path writes back or evicts what
        # a step may have changed in place; rendering a row changes nothing.
        self.state = CachedValueState(
            runtime_context.get_state(ValueStateDescriptor("item", Types.PICKLED_BYTE_ARRAY())),
            self.state_cache_entries,
        )
        self.neighbors = CachedValueState(
            runtime_context.get_state(
                ValueStateDescriptor("item-neighbors", Types.PICKLED_BYTE_ARRAY())
            ),
            self.state_cache_entries,
        )
        # Rows on a processing-time timer (features.item_rows_every_ms; 0: per event).
        self.schedule = RowSchedule(self.rows_every_ms) if self.rows_every_ms > 0 else None

    def process_element(
        self, record: ItemEvent | CoVisitEdge, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        if isinstance(record, CoVisitEdge):
            key = record.source  # keyed by its source (records of an older job version)
            self.neighbors.update(key, self.step.on_edge(self.neighbors.value(key), record))
            return
        key = record.item_id  # the key: the exchange keyed the record by it
        stored = self.neighbors.value(key) if record.links else None
        result = self.step.on_event(self.state.value(key), stored, record)
        if result.neighbors_changed:
            self.neighbors.update(key, result.neighbors)
        for trigger in result.triggers:
            yield ITEM_TRIGGERS_TAG, trigger.to_json()
        if not result.state_changed and not result.item_changed:
            self.state.evict(key)  # not written: the object may differ from the state
            return
        if result.state_changed and not result.item_changed and result.item is not None:
            self.state.update(key, result.item)
        if result.item_changed and result.item is not None:
            item = result.item
            self.state.update(key, item)
            if self.schedule is not None:
                # Flink's processing time is the wall clock: no call into the JVM to read it.
                # Trailing edge only (RowSchedule.defer): an item's rendering (its
                # co-visitation top list above all) costs more than the timer, and items
                # of a replay change a few times a second; users take the leading edge.
                due = self.schedule.defer(key, int(time.time() * 1000), result.learned)
                if due is not None:
                    ctx.timer_service().register_processing_time_timer(due)
                if result.learned:
                    yield item_factor_feed.encode(item.item_id, item.version_us, item.cf_factors)
                return
            neighbors = result.neighbors if record.links else self.neighbors.value(key)
            yield ITEM_ROWS_TAG, self._changelog_record(item, neighbors, result.learned)
            if result.learned:
                # Main output: stamped with the item event's time (side outputs are not).
                yield item_factor_feed.encode(item.item_id, item.version_us, item.cf_factors)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """The coalesced rows of the item (flink_jobs/row_schedule.py), from its state now.
        The factor feed is not deferred: it stays on the main output, per event, stamped
        with the event's time (a processing-time timer's output has none)."""
        if self.schedule is None:
            return
        key = _key_of(ctx)
        due = self.schedule.fire(key, timestamp)
        if due is None:
            return
        item = self.state.value(key)
        if item is None:
            return
        learned = due.learned if due.learned is not None else bool(item.cf_factors)
        yield ITEM_ROWS_TAG, self._changelog_record(item, self.neighbors.value(key), learned)

    def _changelog_record(self, item: Any, neighbors: Any, learned: bool) -> str:
        """The item's ``item_stats`` row, with its ``item_cf`` row when it has learnt."""
        row = self.step.render(item, neighbors)
        if learned and item.cf_factors:
            return encode_record([row, self.step.cf_row(item)])
        return row.to_json()


class AttributionJoin(KeyedCoProcessFunction):
    """Keyed by recommendation id: exposures (input 1) joined with outcomes (input 2).

    One attribution record per exposure once its window has passed in event time.
    """

    def __init__(self, cfg: FeatureSettings, learning_cfg: LearningSettings | None = None) -> None:
        self.window_ms = cfg.attribution_window_s * 1000
        self.wait_ms = cfg.attribution_wait_for_exposure_s * 1000
        learning = learning_cfg or LearningSettings()
        self.label_ms = min(learning.propensity_label_window_s * 1000, self.window_ms)
        self.shards = learning.propensity_shards
        self.state: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("attribution", Types.PICKLED_BYTE_ARRAY())
        )
        self.ab_metrics = metrics.experiment_metrics()

    def _count(self, state: attribution.Attribution) -> None:
        exposure = state.exposure
        if exposure is None or not exposure.experiment:
            return
        labels = (exposure.experiment, exposure.variant)
        self.ab_metrics.exposures.labels(*labels).inc()
        for action, count in (
            ("click", state.clicks),
            ("add_to_cart", state.carts),
            ("purchase", state.purchases),
        ):
            if count:
                self.ab_metrics.actions.labels(*labels, action).inc(count)
        if state.revenue:
            self.ab_metrics.revenue.labels(*labels).inc(state.revenue)

    def _update(self, ctx: Any, state: attribution.Attribution) -> None:
        self.state.update(state)
        for due in (
            attribution.close_time(state, self.window_ms, self.wait_ms),
            attribution.label_time(state, self.label_ms),
        ):
            if due is not None:
                ctx.timer_service().register_event_time_timer(due)

    def process_element1(self, exposure: Exposure, ctx: Any) -> Iterator[str]:
        state = self.state.value() or attribution.Attribution(exposure.rec_id)
        attribution.add_exposure(state, exposure, self.window_ms)
        self._update(ctx, state)
        return iter(())

    def process_element2(self, event: Event, ctx: Any) -> Iterator[str]:
        rec_id = event.properties.get(REC_ID_PROPERTY, "")
        state = self.state.value() or attribution.Attribution(rec_id)
        attribution.add_outcome(state, event, self.window_ms)
        self._update(ctx, state)
        return iter(())

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        state = self.state.value()
        if state is None:
            return
        label_due = attribution.label_time(state, self.label_ms)
        if label_due is not None and timestamp >= label_due:
            # One record per exposure with all its shown items, not one per item: each
            # record is a Python <-> JVM crossing and a trainer state round trip.
            examples = attribution.labelled_examples(state, self.label_ms)
            if examples:
                yield EXAMPLE_TAG, Row(propensity.shard_key(state.rec_id, self.shards), examples)
            self.state.update(state)
        due = attribution.close_time(state, self.window_ms, self.wait_ms)
        if due is None or timestamp < due:
            return  # an earlier timer; the record is not final yet
        self.state.clear()
        if state.exposure is not None:
            self._count(state)
            yield state.to_json()


class ParseExposures(ProcessFunction):
    """Exposure records from serving, keyed both ways in the one call that parses them:
    ``(Row(rec_id, exposure), time)`` for the A/B attribution join (main output) and,
    when ``impressions_on``, ``(Row(user_id, impression), time)`` for the user operator's
    counts (frequency capping) to ``IMPRESSION_TAG``; both get their event time in the
    JVM (``exchanges.with_event_time``). Malformed records go to the DLQ like bad events.

    Parsing and routing were two Python operators: every Recommend answer comes back
    here, so each one saved is a Python <-> JVM round trip per answer."""

    def __init__(self, impressions_on: bool = True) -> None:
        self.impressions_on = impressions_on

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        exposure = parse_exposure(value)
        if exposure is None:
            now_ms = int(time.time() * 1000)
            rejection = Rejection("invalid_exposure", "not an exposure record")
            metrics.job_metrics().dead_letters.labels(rejection.reason).inc()
            yield DLQ_TAG, dead_letter(value, rejection, source="exposures", now_ms=now_ms)
            return
        yield Row(exposure.rec_id, exposure), exposure.time_ms
        if self.impressions_on:
            impression = impressions.from_exposure(exposure)
            yield IMPRESSION_TAG, (Row(exposure.user_id, impression), exposure.time_ms)


class PropensityTraining(KeyedProcessFunction):
    """The click-propensity model, one learner per shard key
    (``learning.propensity_shards``, ``flink_jobs/propensity.py``): each learns its
    labelled shown items and publishes its shard's version on the feature_updates
    changelog as a ``model:propensity`` record; the writer's model registry publishes
    the shards' average. The River model is pickled in keyed state with its metrics."""

    def __init__(
        self,
        cfg: LearningSettings,
        metrics_cfg: MetricsSettings | None = None,
        prior: Mapping[str, float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics_cfg = _metrics_settings(metrics_cfg)
        # The blend the learned head replaces (ranking.strategies["learned_v1"], as
        # weights of the logged features): the gate compares the two on every slate.
        self.prior = dict(prior or {})

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("propensity", Types.PICKLED_BYTE_ARRAY())
        )
        _start_job_metrics(self.metrics_cfg)
        self.model_metrics = metrics.model_metrics()

    def process_element(
        self,
        batch: list[propensity.Example] | propensity.Example,
        ctx: KeyedProcessFunction.Context,
    ) -> Iterator[str]:
        # An exposure's examples (one Example in records of jobs before batching, which a
        # restore may still replay). Versions are cut at the same example counts either way.
        examples = batch if isinstance(batch, list) else [batch]
        trainer = self.state.value() or propensity.new_trainer(self.cfg)
        shards = self.cfg.propensity_shards
        every = propensity.shard_publish_every(self.cfg.propensity_publish_every, shards)
        trainer.judge_slate(examples, self.prior, self.cfg.blend_gate_window)
        for example in examples:
            propensity.learn(trainer, example)
            if propensity.due(trainer, every):
                shard = propensity.shard_of_key(_key_of(ctx))
                yield self._publish(propensity.cut_version(trainer, shard, shards))
        self.state.update(trainer)

    def _publish(self, version: ModelVersion) -> str:
        for name, value in version.metrics.items():
            self.model_metrics.set_prequential(propensity.MODEL_NAME, name, value)
        self.model_metrics.set_version(propensity.MODEL_NAME, version.version)
        log.info(
            "propensity: version %s after %d examples %s",
            version.version,
            version.examples,
            version.metrics,
        )
        return model_version_update(version).to_json()
