"""Traffic for the pipeline: a session generator, dataset replay and a Kafka sender.

* :mod:`.generator`: deterministic, realistic shopping sessions (wire-format dicts).
* :mod:`.replay`: Taobao UserBehavior, MovieLens and JSON-lines files as events, and
  any CSV through a column mapping (:class:`MappedCsvReader`); one reader interface.
* :mod:`.sender`: :class:`TrafficSender` produces events to the Kafka input topics
  at a target rate, optionally re-timed so a replay looks live.
"""

from traffic.generator import GeneratorConfig, TrafficGenerator, generate_events
from traffic.replay import (
    BadRows,
    CsvMapping,
    MappedCsvReader,
    dataset_path,
    detect_format,
    iter_events,
    load_taobao,
    write_jsonl,
)
from traffic.sender import SendProgress, SendStats, TrafficSender, take_token

__all__ = [
    "BadRows",
    "CsvMapping",
    "GeneratorConfig",
    "MappedCsvReader",
    "SendProgress",
    "SendStats",
    "TrafficGenerator",
    "TrafficSender",
    "dataset_path",
    "detect_format",
    "generate_events",
    "iter_events",
    "load_taobao",
    "take_token",
    "write_jsonl",
]
