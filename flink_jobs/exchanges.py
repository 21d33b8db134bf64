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
"""

from __future__ import annotations

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, KeyedStream, OutputTag
from pyflink.java_gateway import get_gateway

__all__ = [
    "KEYED_RECORD",
    "keyed",
    "side_output",
    "timed_record",
    "with_event_time",
]

# What a producer yields for a keyed exchange: Row(key, pickled value).
KEYED_RECORD = Types.ROW([Types.STRING(), Types.PICKLED_BYTE_ARRAY()])


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
