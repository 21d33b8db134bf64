"""Pipeline fixtures: the real Flink job, online-store writer and gRPC server.

``pipeline``
    Feast registry applied, the user-feature job running on a local Flink MiniCluster
    (thread mode) and the online-store writer, both as real processes on the session's
    Redis and Kafka; ready once a probe event's features are readable from Redis.
``grpc_server``
    The gRPC server process on top of ``pipeline``; yields the settings.

Tests must use their own user ids: all tests of a session share one pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ops import stack
from ops.infra.processes import free_port
from personalization.settings import Settings


@pytest.fixture(scope="session")
def pipeline(redis_server: Settings, kafka_broker: Settings, jars: object) -> Iterator[Settings]:
    settings = kafka_broker
    stack.feast_apply(settings)
    started = []
    try:
        for component in (stack.FLINK_JOB, stack.WRITER):
            stack.start_component(settings, component)
            started.append(component)
        stack.wait_pipeline_ready(settings, timeout_s=240)
        yield settings
    finally:
        for component in reversed(started):
            component.process(settings).stop()


@pytest.fixture(scope="session")
def grpc_server(pipeline: Settings) -> Iterator[Settings]:
    stack.start_component(pipeline, stack.SERVER)
    try:
        stack.wait_server_ready(pipeline)
        yield pipeline
    finally:
        stack.SERVER.process(pipeline).stop()


@contextmanager
def extra_server(base: Settings, name: str, **sections: dict[str, Any]) -> Iterator[Settings]:
    """Another gRPC server process on the same pipeline, on free ports, with some
    settings changed (``ranking={"strategy": "hybrid_v2"}``, ...); yields its settings."""
    data = base.model_dump()
    for section, changes in sections.items():
        data[section].update(changes)
    data["serving"]["port"] = free_port()
    data["metrics"]["serving_port"] = free_port()
    settings = Settings.model_validate(data)
    component = stack.Component(name, "serving.server")
    stack.start_component(settings, component)
    try:
        stack.wait_server_ready(settings)
        yield settings
    finally:
        component.process(settings).stop()
