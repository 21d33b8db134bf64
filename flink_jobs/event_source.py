"""The behaviour-event source: Kafka read by a Flink SQL table, event time and watermarks
taken in the JVM, per Kafka partition.

Why a table and not ``KafkaSource`` + the parsing operator's times: the watermark must be
the minimum over the partitions' own event times (Flink's per-split watermarks), and
those are generated inside the source only, from a time it can read. Python's parse
comes after the source has merged its partitions, so a watermark taken there follows
whichever partition is ahead. Reading a backlog (a replay, a job catching up after
downtime), partitions with fewer events per day race weeks ahead in event time and the
other partitions' events arrive behind the watermark: their users' session, cart and
retention timers fire early (a user lost its state to a 90-day retention after a 72-day
gap). Kafka record timestamps cannot carry the event time instead: a backfill of old
events would be deleted at once by the topics' time-based retention.

So the table reads each record's raw value untouched (``raw`` format; Python still
parses and validates it and dead-letters what it refuses) and computes its event time
with ``JSON_VALUE`` in SQL, the same rules as ``personalization.events.
parse_event_time_ms``: epoch milliseconds, epoch seconds below 1e11, or ISO-8601 (a time
without a zone is UTC). The watermark in the DDL is pushed into the Kafka source, which
generates it per partition. A record whose time SQL cannot read (Python will refuse it),
or one further ahead of its Kafka timestamp than ``features.max_future_skew_s``, moves
no watermark. Only ``value`` reaches Python; the records keep their Kafka timestamps
(nothing downstream reads them: the output topics take the broker's append time).
"""

from __future__ import annotations

import warnings

from pyflink.datastream import DataStream, StreamExecutionEnvironment

from personalization.settings import Settings

with warnings.catch_warnings():
    # Importing PyFlink's Table API warns about its own deprecated classes (FLIP-164),
    # a page of text in the job's log at every start; not ours to act on.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyflink.table import StreamTableEnvironment

TABLE = "behaviour_events"
# How soon a source of the job reads partitions added to its topics.
PARTITION_DISCOVERY_MS = 10_000

# The payload's event time, as text (a JSON number comes back as its digits).
_TEXT = (
    "TRIM(COALESCE(JSON_VALUE(`value`, '$.event_time'), JSON_VALUE(`value`, '$.event_time_ms')))"
)
# ISO-8601: a date, optionally a time (T or space) with a fraction, optionally a zone.
_ISO = r"^(\d{4}-\d{2}-\d{2})([T ](\d{2}:\d{2}(:\d{2}(\.\d+)?)?))?(Z|[+-]\d{2}:?\d{2})?$"
_OFFSET = r"([+-])(\d{2}):?(\d{2})$"
_ZONE = r"(Z|[+-]\d{2}:?\d{2})$"
# Epoch milliseconds as our producers write them (12-13 digits: from 1973 on).
_EPOCH_MS = r"^\d{12,13}$"
# A time without seconds gets ":00" (Flink's REGEXP_REPLACE has no group references).
_NO_SECONDS = r"(?<=[T ]\d{2}:\d{2})$"


def _literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def event_time_sql(max_future_skew_s: int) -> str:
    """The payload's event time as ``TIMESTAMP_LTZ(3)``, by ``parse_event_time_ms``'s
    rules; NULL when it has none that those accept, or one more than
    ``max_future_skew_s`` past the record's Kafka timestamp ``kafka_time``. Needs
    ``table.local-time-zone`` UTC.

    Cost: ``JSON_VALUE`` parses the whole payload on every reference (Flink shares no
    subexpressions). The first version made ~20 references a record and the profile put
    a third of the source thread there. Epoch milliseconds in ``event_time`` (what our
    producers write) now take four: CASE evaluates only the branch taken."""
    fast = "JSON_VALUE(`value`, '$.event_time')"
    number = f"TRY_CAST({_TEXT} AS DOUBLE)"
    from_number = (
        f"CASE WHEN {number} >= 1e15 THEN CAST(NULL AS TIMESTAMP_LTZ(3)) "
        f"WHEN {number} >= 1e11 THEN TO_TIMESTAMP_LTZ(CAST({number} AS BIGINT), 3) "
        f"WHEN {number} > 0 THEN TO_TIMESTAMP_LTZ(CAST({number} * 1000 AS BIGINT), 3) END"
    )
    iso = f"REGEXP({_TEXT}, {_literal(_ISO)})"
    # The local date-time part (T -> space; no zone), read as UTC.
    local = (
        "CAST(TRY_CAST(REGEXP_REPLACE(REGEXP_REPLACE(REGEXP_REPLACE("
        f"{_TEXT}, {_literal(_ZONE)}, ''), {_literal(_NO_SECONDS)}, ':00'), 'T', ' ')"
        " AS TIMESTAMP(3)) AS TIMESTAMP_LTZ(3))"
    )
    offset_minutes = (
        f"COALESCE((CASE REGEXP_EXTRACT({_TEXT}, {_literal(_OFFSET)}, 1)"
        " WHEN '-' THEN -1 ELSE 1 END)"
        f" * (CAST(REGEXP_EXTRACT({_TEXT}, {_literal(_OFFSET)}, 2) AS INT) * 60"
        f" + CAST(REGEXP_EXTRACT({_TEXT}, {_literal(_OFFSET)}, 3) AS INT)), 0)"
    )
    from_iso = f"CASE WHEN {iso} THEN TIMESTAMPADD(MINUTE, -{offset_minutes}, {local}) END"
    general = f"CASE WHEN {number} IS NOT NULL THEN {from_number} ELSE {from_iso} END"
    parsed = (
        f"CASE WHEN REGEXP({fast}, {_literal(_EPOCH_MS)}) "
        f"THEN TO_TIMESTAMP_LTZ(CAST({fast} AS BIGINT), 3) ELSE {general} END"
    )
    bound = f"TIMESTAMPADD(SECOND, {int(max_future_skew_s)}, `kafka_time`)"
    return f"CASE WHEN {parsed} <= {bound} THEN {parsed} END"


def _interval(ms: int) -> str:
    """A SQL day-to-second interval of ``ms`` milliseconds."""
    seconds, millis = divmod(int(ms), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (
        f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}'"
        " DAY(2) TO SECOND(3)"
    )


def consumer_properties(settings: Settings) -> dict[str, str]:
    """The Kafka consumer properties every source of the job sets: the events table as
    ``properties.*`` options, the other sources through ``KafkaSource``'s builder
    (``user_features_job.kafka_source``)."""
    return {
        # Short runs per partition: the other sources' watermarks are one over all
        # partitions (see the setting), so how far one passes a partition's records is
        # a run's span.
        "max.partition.fetch.bytes": str(settings.kafka.source_max_partition_fetch_bytes),
        "commit.offsets.on.checkpoint": "true",
    }


def events_table_ddl(settings: Settings, table: str = TABLE) -> str:
    """``CREATE TABLE`` of the behaviour-event topics: the raw value, the record's Kafka
    timestamp, the event time and the watermark (pushed into the Kafka source, so one per
    partition). Offsets, group and consumer properties as ``user_features_job.kafka_source``."""
    k, f = settings.kafka, settings.flink
    parsed = event_time_sql(settings.features.max_future_skew_s)
    options = {
        "connector": "kafka",
        "topic": ";".join(k.event_topics),
        "properties.bootstrap.servers": k.bootstrap_servers,
        "properties.group.id": k.flink_consumer_group,
        # Checkpointed offsets first (a restore); else the group's committed ones; else
        # flink.starting_offsets.
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "latest" if f.starting_offsets == "latest" else "earliest",
        "scan.topic-partition-discovery.interval": f"{PARTITION_DISCOVERY_MS} ms",
        **{f"properties.{key}": value for key, value in consumer_properties(settings).items()},
        # A partition with no records for this long stops holding the watermark back.
        "scan.watermark.idle-timeout": f"{f.source_idleness_ms} ms",
        "format": "raw",
    }
    with_clause = ",\n  ".join(
        f"{_literal(key)} = {_literal(value)}" for key, value in options.items()
    )
    return (
        f"CREATE TABLE `{table}` (\n"
        "  `value` STRING,\n"
        "  `kafka_time` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,\n"
        # The rowtime attribute; NULL (no watermark from the record) when SQL reads no
        # time. The job selects only `value`, so it is computed for the watermark only.
        f"  `event_time` AS {parsed},\n"
        f"  WATERMARK FOR `event_time` AS `event_time` - {_interval(f.out_of_orderness_ms)}\n"
        f") WITH (\n  {with_clause}\n)"
    )


def behaviour_events(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """The behaviour events' raw values (``Row(value)``) with per-partition event-time
    watermarks: ``Source: behaviour_events`` of the plan."""
    t_env = StreamTableEnvironment.create(env)
    config = t_env.get_config()
    # Times without a zone are UTC (``parse_event_time_ms``).
    config.set("table.local-time-zone", "UTC")
    # Operator uids from the plan's node ids, so a checkpoint restores into the same
    # source operator on every run of this code.
    config.set("table.exec.uid.generation", "ALWAYS")
    t_env.execute_sql(events_table_ddl(settings))
    return t_env.to_data_stream(t_env.sql_query(f"SELECT `value` FROM `{TABLE}`"))
