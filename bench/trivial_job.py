"""The baseline of ``bench ingest``: the smallest keyed PyFlink job on the same backlog.

Kafka (the event topics) -> Python: JSON -> user id (chained before the exchange) ->
key_by(user) -> a KeyedProcessFunction with a pickled dict per user (count, last item,
last time) -> one short record per event -> Kafka (``bench_trivial_out``, at least
once). Same Flink configuration as the real job (thread mode, bundle size, checkpoints,
parallelism), its own consumer group, so it reads the whole backlog again.

This is the "trivial keyed job" of ARCHITECTURE.md: what this machine gives a PyFlink
job that does one Python crossing per exchange and almost nothing else. ``bench
ingest`` runs it in the same invocation as the real job and reports the ratio.

    python -m bench.trivial_job --settings-json '<Settings JSON>'
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import (
    KeyedProcessFunction,
    MapFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import ValueStateDescriptor

from flink_jobs.python_env import embedded_python_path
from flink_jobs.user_features_job import flink_configuration, kafka_sink, kafka_source
from personalization.settings import Settings, load_settings, settings_from_json

OUTPUT_TOPIC = "bench_trivial_out"
GROUP_SUFFIX = "-bench-trivial"
JOB_NAME = "bench-trivial-keyed-job"


class UserOf(MapFunction):
    def map(self, value: str) -> tuple[str, str]:
        data = json.loads(value)
        return str(data.get("user_id", "")), str(data.get("item_id", ""))


class CountPerUser(KeyedProcessFunction):
    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, value: tuple[str, str], ctx: Any) -> Iterator[str]:
        user, item = value
        state = self.state.value() or {"count": 0, "last_item": ""}
        state["count"] += 1
        state["last_item"] = item
        self.state.update(state)
        yield f"{user}:{state['count']}"


def build(env: StreamExecutionEnvironment, settings: Settings) -> None:
    source = env.from_source(
        kafka_source(settings, group_suffix=GROUP_SUFFIX),
        WatermarkStrategy.no_watermarks(),
        "behaviour-events",
    )
    (
        source.map(UserOf(), output_type=Types.PICKLED_BYTE_ARRAY())
        .key_by(lambda v: v[0], key_type=Types.STRING())
        .process(CountPerUser(), output_type=Types.STRING())
        .sink_to(kafka_sink(settings, OUTPUT_TOPIC))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings-json", default="")
    args = parser.parse_args(argv)
    settings = settings_from_json(args.settings_json) if args.settings_json else load_settings()
    settings = settings.model_copy(
        update={"flink": settings.flink.model_copy(update={"job_name": JOB_NAME})}
    )
    os.environ["PYTHONPATH"] = embedded_python_path()
    heap_mb = settings.flink.local_jvm_heap_mb
    if heap_mb > 0 and "JVM_ARGS" not in os.environ:
        os.environ["JVM_ARGS"] = f"-Xms{heap_mb}m -Xmx{heap_mb}m"
    conf = flink_configuration(settings, None)
    # Its own checkpoint folder: the real job's retained checkpoints stay untouched.
    conf.set_string(
        "execution.checkpointing.dir", (settings.checkpoint_path / "bench-trivial").as_uri()
    )
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.add_jars(settings.kafka_connector_jar_path.as_uri())
    env.set_parallelism(settings.flink.parallelism)
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms)
    build(env, settings)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    main()
