"""Keyed exchanges, side outputs and event time without hidden Python operators.

PyFlink's conveniences each add a Python operator that only moves a record along, and in
thread mode every Python operator costs a Python <-> JVM round trip per record (the
job's plan, ``tests/integration/test_job_graph.py``, counts them):

- ``key_by(lambda ...)`` runs an ``AddKey`` Python function that wraps each record as
  ``Row(key, value)`` before the JVM's ``keyBy``;
- ``get_side_output(tag)`` appends an identity ``map(lambda i: i)``;
- ``assign_timestamps_and_watermarks`` with a Python ``TimestampAssigner`` runs an
  ``Extract-Timestamp`` Python function that pairs each record with its time.

Here the producing operator does that work in the call it makes anyway: it yields
``Row(key, value)`` for a keyed exchange, ``(value, time_ms)`` for event time, and side
outputs are taken as the JVM stream they already are. What remains is the JVM half of
each helper (``KeyByKeySelector``, ``CustomTimestampAssigner``,
``RemoveTimestampMapFunction``: the same classes PyFlink's own helpers call), so the
records, keys and key groups are those of the helpers (a savepoint of the older plan
restores; only the stateless helper operators are gone).

One output for two topics: an operator whose timers must emit both feature rows and
triggers (a broadcast-connected keyed function sends what ``on_timer`` yields to its main
output only) yields ``Row(kind, payload)`` (``ROUTED_RECORD``), and :func:`routed` splits
the stream by kind in the JVM (a Table API filter, no Python) for the two Kafka sinks,
which write the payload (``flink_jobs/user_features_job.kafka_sink(routed=True)``).
"""

from __future__ import annotations

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, KeyedStream, OutputTag
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment
from pyflink.table.expressions import col

__all__ = [
    "KEYED_RECORD",
    "ROUTED_RECORD",
    "ROWS",
    "TRIGGERS",
    "keyed",
    "routed",
    "side_output",
    "timed_record",
    "with_event_time",
]

# What a producer yields for a keyed exchange: Row(key, pickled value).
KEYED_RECORD = Types.ROW([Types.STRING(), Types.PICKLED_BYTE_ARRAY()])
# Records bound for one of several Kafka topics: Row(kind, payload) (:func:`routed`).
ROUTED_RECORD = Types.ROW_NAMED(["kind", "payload"], [Types.STRING(), Types.STRING()])
ROWS = "r"  # changelog records, for the feature_updates topic
TRIGGERS = "t"  # trigger records, for the triggers topic


def timed_record(value_type: TypeInformation) -> TypeInformation:
    """The output type of a producer that yields ``(value, event_time_ms)``."""
    return Types.TUPLE([value_type, Types.LONG()])


def keyed(stream: DataStream, value_type: TypeInformation | None = None) -> KeyedStream:
    """``stream`` of ``Row(key, value)`` (string keys) keyed by its first field; the keyed
    function downstream receives ``value`` (pickled objects unless ``value_type``)."""
    gateway = get_gateway()
    j_keyed = stream._j_data_stream.keyBy(
        gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info()
    )
    return KeyedStream(j_keyed, value_type or Types.PICKLED_BYTE_ARRAY(), stream)


def side_output(stream: DataStream, tag: OutputTag) -> DataStream:
    """The records ``stream``'s operator yielded to ``tag``, typed by the tag."""
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def with_event_time(
    stream: DataStream, strategy: WatermarkStrategy, value_type: TypeInformation
) -> DataStream:
    """``stream`` of ``(value, event_time_ms)`` -> ``value`` stamped with that time, with
    ``strategy``'s watermarks (its bounds and idleness; no Python assigner)."""
    jvm = get_gateway().jvm
    eventtime = jvm.org.apache.flink.streaming.api.functions.python.eventtime
    j_strategy = strategy._j_watermark_strategy.withTimestampAssigner(
        eventtime.CustomTimestampAssigner()
    )
    j_timed = stream._j_data_stream.assignTimestampsAndWatermarks(j_strategy)
    return DataStream(
        j_timed.map(eventtime.RemoveTimestampMapFunction(), value_type.get_java_type_info())
    )


def routed(t_env: StreamTableEnvironment, stream: DataStream, kind: str) -> DataStream:
    """The records of ``stream`` (``ROUTED_RECORD``) of one ``kind``, still as
    ``Row(kind, payload)``: filtered in the JVM by the Table planner, with no Python
    operator. A Kafka sink built with ``routed=True`` writes the payload."""
    table = t_env.from_data_stream(stream).where(col("kind") == kind)
    return DataStream(t_env._j_tenv.toDataStream(table._j_table))
