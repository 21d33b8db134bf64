"""The user-feature job: Kafka events -> per-user / per-item state -> feature updates.

    clickstream, purchase_events, engagement_metrics (Kafka)
      (a SQL table: event time and watermarks per partition, in the JVM)
      -> ParseEvents ──invalid──► events_dlq
      -> key_by(user) UserFeatures: dedup, profile, impressions, triggers ──► triggers
         + CF user half          │ feature rows (profile, user_cf) ──► feature_updates
           (item factors:        ├ accepted item events (+ the user's factors)
            broadcast feed)      └ outcomes (events with a rec_id)
      -> key_by(item) ItemFeatures: popularity, trending, co-visitation, CF item half
                                   ──► feature_updates (item_stats, item_cf)
                                   └ new item factors ──► item_factors (Kafka) ──► feed
    exposures (Kafka, from serving)
      -> ParseExposures: impressions ─► UserFeatures (frequency capping, fatigue)
         + key_by(rec_id) AttributionJoin(+ outcomes) ──► ab_outcomes
                        └ labelled shown items ─► PropensityTraining ─► model versions
                                                  (on feature_updates, to the registry)

Feature rows go to a Kafka changelog (``feature_updates``) rather than straight to
Redis from Python: PyFlink's Python functions have no snapshot hook, so a write
buffer inside them could hold rows a completed checkpoint already acknowledged, and a
crash would lose them. The Kafka sink flushes on every checkpoint, so every row of a
checkpointed event is durable; the online-store writer (``writer/process.py``)
applies them to Feast's Redis store in batches and commits its offsets only after the
write. Rows are full and versioned, so replays are idempotent.

Run locally (embedded MiniCluster):  personalize job
Submit to a cluster:  flink run --python flink_jobs/user_features_job.py --jarfile <kafka
connector jar> -- --settings-json '<Settings JSON>'
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import CheckpointingMode, DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from flink_jobs.checkpoints import latest_checkpoint
from flink_jobs.event_source import PARTITION_DISCOVERY_MS, behaviour_events, consumer_properties
from flink_jobs.exchanges import KEYED_RECORD, keyed, side_output, timed_record, with_event_time
from flink_jobs.operators import (
    DLQ_TAG,
    EXAMPLE_TAG,
    IMPRESSION_TAG,
    ITEM_EVENT_TAG,
    ITEM_FACTORS_STATE,
    ITEM_ROWS_TAG,
    ITEM_TRIGGERS_TAG,
    OUTCOME_TAG,
    USER_ROWS_TAG,
    AttributionJoin,
    ItemFeatures,
    ParseCatalogPrices,
    ParseEvents,
    ParseExposures,
    PropensityTraining,
    UserFeatures,
)
from flink_jobs.price_drop import price_drop_rules
from flink_jobs.python_env import embedded_python_path
from flink_jobs.triggers import load_rules, with_rules_loaded
from personalization.model_versions import source_feature_weights
from personalization.settings import (
    LEARNED_BLEND,
    Settings,
    load_settings,
    settings_from_json,
)

log = logging.getLogger(__name__)


def flink_configuration(settings: Settings, restore_from: Path | None) -> Configuration:
    cfg = settings.flink
    conf = Configuration()
    conf.set_string("python.execution-mode", cfg.execution_mode)
    # PyFlink starts Python workers by name; pin them to this interpreter (the venv).
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.fn-execution.bundle.size", str(cfg.bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(cfg.bundle_time_ms))
    conf.set_string("pipeline.name", cfg.job_name)
    conf.set_string("execution.checkpointing.dir", settings.checkpoint_path.as_uri())
    conf.set_string(
        "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
    )
    conf.set_string("execution.checkpointing.num-retained", "3")
    conf.set_string("execution.buffer-timeout.interval", f"{cfg.buffer_timeout_ms} ms")
    conf.set_string(
        "execution.checkpointing.unaligned.enabled", str(cfg.unaligned_checkpoints).lower()
    )
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", "1000000")
    conf.set_string("restart-strategy.fixed-delay.delay", "2 s")
    if cfg.separate_item_side:
        # A MiniCluster gives as many slots as the job's parallelism; two slot sharing
        # groups need twice that (the standalone cluster has them as TaskManagers).
        conf.set_string("taskmanager.numberOfTaskSlots", str(cfg.taskmanagers))
    if restore_from is not None:
        conf.set_string("execution.state-recovery.path", restore_from.as_uri())
        # A new job version may drop an operator: restore the rest instead of refusing.
        conf.set_string("execution.state-recovery.ignore-unclaimed-state", "true")
    return conf


def kafka_sink(settings: Settings, topic: str, *, exactly_once: bool = False) -> KafkaSink:
    """A Kafka sink for ``topic``.

    At-least-once flushes the producer on every checkpoint: nothing acknowledged by a
    checkpoint can sit in a buffer. That suits ``feature_updates``, whose consumer is
    idempotent (versioned full rows) and wants low latency. Records that are counted
    downstream (triggers, dead letters) go exactly-once: Kafka transactions committed
    with each checkpoint, so a restore never shows a read_committed consumer a record
    twice, at the cost of up to one checkpoint interval of delay.
    """
    f = settings.flink
    linger_ms = f.sink_linger_ms
    # Kafka requires delivery >= linger + request timeout; it would raise it itself.
    delivery_timeout_ms = max(f.sink_delivery_timeout_ms, f.sink_request_timeout_ms + linger_ms)
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka.bootstrap_servers)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(topic)
            .set_value_serialization_schema(SimpleStringSchema())
            .build()
        )
        .set_property("linger.ms", str(linger_ms))
        .set_property("compression.type", "lz4")
        .set_property("max.in.flight.requests.per.connection", str(f.sink_max_in_flight_requests))
        .set_property("request.timeout.ms", str(f.sink_request_timeout_ms))
        .set_property("delivery.timeout.ms", str(delivery_timeout_ms))
    )
    if exactly_once:
        builder = (
            builder.set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .set_transactional_id_prefix(f"{settings.flink.job_name}-{topic}")
            .set_property("transaction.timeout.ms", str(settings.flink.transaction_timeout_ms))
        )
    else:
        builder = builder.set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
    return builder.build()


def kafka_source(
    settings: Settings, topics: tuple[str, ...] | None = None, group_suffix: str = ""
) -> KafkaSource:
    k = settings.kafka
    reset = (
        KafkaOffsetResetStrategy.LATEST
        if settings.flink.starting_offsets == "latest"
        else KafkaOffsetResetStrategy.EARLIEST
    )
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(k.bootstrap_servers)
        .set_topics(*(topics or k.event_topics))
        .set_group_id(k.flink_consumer_group + group_suffix)
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(reset))
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("partition.discovery.interval.ms", str(PARTITION_DISCOVERY_MS))
    )
    for key, value in consumer_properties(settings).items():
        builder = builder.set_property(key, value)
    return builder.build()


def kafka_input(
    env: StreamExecutionEnvironment,
    source: KafkaSource,
    label: str,
    uid: str,
    watermarks: WatermarkStrategy | None = None,
) -> DataStream:
    """A Kafka source of the job, ``kafka: <label>`` in the plan. Without ``watermarks``
    none are generated: the parsing operator after it gives the records their times
    (``exchanges.with_event_time``)."""
    return (
        env.from_source(source, watermarks or WatermarkStrategy.no_watermarks(), label)
        .name(f"kafka: {label}")
        .uid(uid)
    )


def _watermarks(settings: Settings) -> WatermarkStrategy:
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(settings.flink.out_of_orderness_ms)
        )
        # Times come with the records (``exchanges.with_event_time``), never from a Python
        # assigner: it would be one more Python operator per record.
        .with_idleness(Duration.of_millis(settings.flink.source_idleness_ms))
    )


# The slot sharing group of the item side when ``flink.separate_item_side`` is on.
ITEM_SIDE_GROUP = "item-side"


def on_item_side(stream: DataStream, settings: Settings) -> DataStream:
    """``stream``'s operator in the item side's slot sharing group, when the item side runs
    apart (``flink.separate_item_side``; the item operator, the A/B attribution and the
    propensity learner, and the events' parser): each slot holds one subtask of one group, so
    with one slot per TaskManager the user side and the item side land in different
    TaskManager processes, each with its own Python interpreter. The operators chained
    after it (its sinks) follow it; nothing about state changes (uids, key groups), so
    savepoints restore with the setting on or off."""
    if not settings.flink.separate_item_side:
        return stream
    return stream.slot_sharing_group(ITEM_SIDE_GROUP)


def build_pipeline(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """The operators and exchanges. Every Python operator yields records ready for the
    next exchange (``Row(key, value)``, ``(value, time)``), so the plan has no hidden
    Python operators between them (``flink_jobs/exchanges.py``)."""
    # The trigger rule file is read and validated here, once, and travels in the settings.
    features_cfg = with_rules_loaded(settings.features)
    k = settings.kafka
    # Read by a SQL table: the event time and its watermark come from the JVM, one per
    # Kafka partition, so a backlog's partitions cannot carry it past each other's
    # records (flink_jobs/event_source.py).
    raw = behaviour_events(env, settings)
    events = (
        raw.process(
            ParseEvents(features_cfg, settings.privacy, settings.metrics),
            output_type=KEYED_RECORD,
        )
        .name("parse + validate")
        .uid("parse-events")
    )
    # Apart, the parser runs beside the item operator, not the user operator: at 2,000
    # events/s the user side's TaskManager was at 80 % of a core and the item side's at
    # 35 %, and the parser's Python shared the user operator's interpreter. The exchange
    # to the user operator is a keyed one either way.
    events = on_item_side(events, settings)

    # Exposures (what Recommend answered): joined with the outcomes that follow for A/B
    # attribution, and counted per user as impressions (frequency capping, fatigue).
    exposures_raw = kafka_input(
        env,
        kafka_source(settings, (k.exposures_topic,), "-exposures"),
        "exposures",
        "source-exposures",
    )
    impressions_on = features_cfg.impression_window_s > 0
    exposures = exposures_raw.process(
        ParseExposures(impressions_on), output_type=timed_record(KEYED_RECORD)
    )
    exposures = exposures.name("parse exposures -> rec id, impression").uid("parse-exposures")
    routed_exposures = with_event_time(exposures, _watermarks(settings), KEYED_RECORD)
    routed_exposures = routed_exposures.name("exposure time").uid("exposure-time")
    user_input = events
    if impressions_on:
        # The user operator's watermark becomes the minimum of both inputs; an idle
        # exposures source (no Recommend traffic) is ignored after source_idleness_ms.
        impressions = with_event_time(
            side_output(exposures, IMPRESSION_TAG), _watermarks(settings), KEYED_RECORD
        )
        user_input = events.union(impressions.name("impression time").uid("impression-time"))

    # The item CF factors the item operators publish, back to every user subtask: the
    # online MF is partitioned (user half keyed by user, item half by item) and a Flink
    # job cannot loop, so the loop goes through Kafka (flink_jobs/item_factor_feed.py).
    # Its records carry the item event's time, so the feed's watermark follows the
    # events' (never holding the user operator's timers back longer than the loop).
    item_factors = kafka_input(
        env,
        kafka_source(settings, (k.item_factors_topic,), "-item-factors"),
        "item factors",
        "source-item-factors",
        _watermarks(settings),
    )
    user_op = (
        keyed(user_input)
        .connect(item_factors.broadcast(ITEM_FACTORS_STATE))
        .process(
            UserFeatures(
                features_cfg,
                settings.privacy,
                settings.metrics,
                settings.learning,
                segments=settings.segments,
                state_cache_entries=settings.flink.state_cache_entries,
            ),
            output_type=Types.STRING(),
        )
        .name("user features + triggers + CF (user half)")
        .uid("user-features")
    )
    # Re-stamped with the event's time (a side output drops it), so the item operator's
    # main output, the feed, carries event time into its Kafka timestamps.
    item_events = with_event_time(
        side_output(user_op, ITEM_EVENT_TAG), _watermarks(settings), KEYED_RECORD
    )
    item_events = item_events.name("item event time").uid("item-event-time")
    if price_drop_rules(load_rules(features_cfg.triggers)):
        # The catalog's prices too: a price cut fires the price_drop rules without
        # waiting for the item's next event (flink_jobs/price_drop.py).
        catalog = kafka_input(
            env,
            kafka_source(settings, (k.catalog_topic,), "-catalog-prices"),
            "catalog",
            "source-catalog",
        )
        prices = catalog.process(
            ParseCatalogPrices(features_cfg.max_future_skew_s),
            output_type=timed_record(KEYED_RECORD),
        )
        prices = prices.name("catalog prices").uid("catalog-prices")
        catalog_events = with_event_time(prices, _watermarks(settings), KEYED_RECORD)
        item_events = item_events.union(
            catalog_events.name("catalog price time").uid("catalog-price-time")
        )
    item_op = (
        keyed(item_events)
        .process(
            ItemFeatures(
                features_cfg,
                settings.learning,
                state_cache_entries=settings.flink.state_cache_entries,
            ),
            output_type=Types.STRING(),
        )
        .name("item popularity + CF (item half)")
        .uid("item-features")
    )
    item_op = on_item_side(item_op, settings)
    item_op.sink_to(kafka_sink(settings, k.item_factors_topic)).name("kafka: item factors").uid(
        "sink-item-factors"
    )

    # The user operator's triggers and the item operator's (price drops of carted items),
    # rebalanced into the sink for the reason the changelog sink's inputs are (below).
    triggers = user_op.union(side_output(item_op, ITEM_TRIGGERS_TAG)).rebalance()
    triggers.sink_to(kafka_sink(settings, k.triggers_topic, exactly_once=True)).name(
        "kafka: triggers"
    ).uid("sink-triggers")
    dead_letters = side_output(events, DLQ_TAG).union(side_output(exposures, DLQ_TAG))

    attributions = (
        keyed(routed_exposures)
        .connect(keyed(side_output(user_op, OUTCOME_TAG)))
        .process(AttributionJoin(features_cfg, settings.learning), output_type=Types.STRING())
        .name("A/B attribution join")
        .uid("ab-attribution")
    )
    attributions = on_item_side(attributions, settings)
    attributions.sink_to(kafka_sink(settings, k.ab_outcomes_topic, exactly_once=True)).name(
        "kafka: ab_outcomes"
    ).uid("sink-ab-outcomes")
    # The click-propensity model learns from the labelled shown items (one learner).
    model_versions = (
        keyed(side_output(attributions, EXAMPLE_TAG))
        .process(
            PropensityTraining(
                settings.learning,
                settings.metrics,
                source_feature_weights(settings.ranking.strategies.get(LEARNED_BLEND, {})),
            ),
            output_type=Types.STRING(),
        )
        .name("propensity model (River)")
        .uid("propensity-learner")
    )
    model_versions = on_item_side(model_versions, settings)

    # Rebalanced, not forwarded: a forward (pointwise) input makes the sink align its
    # checkpoint barriers, and at parallelism > 1 that deadlocks in the diamond user op ->
    # item op -> sink <- user op. The user op aligns (its broadcast input rules out
    # unaligned checkpoints); the item op, unaligned, forwards the barrier of the first
    # user subtask done; the sink then blocks the item op's channel until the other user
    # subtask's barrier arrives, which cannot, as that subtask is backpressured by the
    # item op. With only all-to-all inputs the sink checkpoints unaligned and never blocks.
    rows = side_output(user_op, USER_ROWS_TAG).union(
        side_output(item_op, ITEM_ROWS_TAG), model_versions
    )
    rows.rebalance().sink_to(kafka_sink(settings, k.feature_updates_topic)).name(
        "kafka: feature_updates"
    ).uid("sink-feature-updates")
    dead_letters.sink_to(kafka_sink(settings, k.dlq_topic, exactly_once=True)).name(
        "kafka: events_dlq"
    ).uid("sink-dlq")


def create_environment(settings: Settings, restore_from: Path | None) -> StreamExecutionEnvironment:
    env = StreamExecutionEnvironment.get_execution_environment(
        flink_configuration(settings, restore_from)
    )
    # Added, not set: `flink run --python` already lists the flink-python jar there.
    env.add_jars(settings.kafka_connector_jar_path.as_uri())
    env.set_parallelism(settings.flink.parallelism)
    env.set_max_parallelism(settings.flink.max_parallelism)
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return env


def run(settings: Settings, *, restore: str = "latest", detached: bool = False) -> None:
    """Build and execute the job; ``restore='latest'`` resumes from the newest checkpoint."""
    restore_from = None
    if restore == "latest":
        restore_from = latest_checkpoint(settings.checkpoint_path)
    elif restore not in ("", "none"):
        restore_from = Path(restore)
    if restore_from:
        log.info("restoring from checkpoint %s", restore_from)
    # Must be in the environment before the JVM starts (it inherits it).
    os.environ["PYTHONPATH"] = embedded_python_path()
    heap_mb = settings.flink.local_jvm_heap_mb
    if heap_mb > 0 and "JVM_ARGS" not in os.environ:
        # PyFlink's local gateway passes JVM_ARGS to the java command it starts.
        os.environ["JVM_ARGS"] = f"-Xms{heap_mb}m -Xmx{heap_mb}m"
    env = create_environment(settings, restore_from)
    build_pipeline(env, settings)
    if detached:
        env.execute_async(settings.flink.job_name)
    else:
        env.execute(settings.flink.job_name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings-json",
        default="",
        help="settings as JSON (used when submitting to a cluster); default: from env",
    )
    parser.add_argument(
        "--restore",
        default="latest",
        help="'latest' (newest retained checkpoint), 'none', or a checkpoint path",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = settings_from_json(args.settings_json) if args.settings_json else load_settings()
    run(settings, restore=args.restore)


if __name__ == "__main__":
    main()
