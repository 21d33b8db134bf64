"""Shared pytest fixtures.

Service fixtures (session-scoped, started at most once per test session):

``services_settings``
    A :class:`~personalization.settings.Settings` whose ``run_dir`` is a pytest tmp dir
    and whose Redis, Kafka (client + KRaft controller) and Flink (REST + RPC) ports are
    free ports picked at session start, so tests never touch a developer's running
    stack. ``<run_dir>/jars`` links to the project's ``.run/jars`` (see ``jars``).
``jars``
    Fetches the Kafka broker jars and the Flink Kafka connector once (Maven, cached in
    ``~/.m2``) and returns their paths.
``redis_server``
    A Redis started for the session on ``services_settings``; stopped at the end.
``redis_cluster``
    A local 3-master Redis Cluster (``ops/infra/redis_cluster.py``) on free ports, for
    the session; yields ``services_settings`` with ``redis.cluster_nodes`` set (and a
    Feast registry of its own), so every client built from them talks to the cluster.
``kafka_broker``
    A single-node KRaft Kafka with every ``settings.kafka.all_topics`` topic created;
    stopped at the end.

Tests that use them are marked ``@pytest.mark.integration``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.infra import kafka_broker as kafka_mod
from ops.infra import redis_cluster as redis_cluster_mod
from ops.infra import redis_server as redis_mod
from ops.infra.jars import JarPaths, ensure_jars
from ops.infra.processes import free_port, port_open
from personalization.settings import (
    PROJECT_ROOT,
    FeastSettings,
    FeatureSettings,
    FlinkSettings,
    KafkaSettings,
    LearningSettings,
    MetricsSettings,
    PrivacySettings,
    RedisSettings,
    Settings,
    TriggerSettings,
)
from tests.identity import TEST_HMAC_SECRET

# Jars are immutable downloads: every test run dir's jars/ is a symlink to the project's
# .run/jars, so Maven copies them once, not into every tmp dir.
SHARED_JARS_DIR = PROJECT_ROOT / ".run" / "jars"
# Admin RPCs (forget, consent) are enabled in test stacks with this token.
ADMIN_TOKEN = "test-admin-token"
# The default trigger rules plus one rule of each other shape
# (tests/integration/test_trigger_rules_job.py).
TEST_TRIGGER_RULES = Path(__file__).resolve().parent / "integration" / "trigger_rules.yaml"

# The stacks the tests start run every process at one CPU priority: the local stack's
# default (the job and writer below serving, settings.priority) is for a machine that
# serves traffic, and on a test machine busy with other work it would only starve the
# job and make waits time out. Set here so every Settings() of the session, and every
# process it starts, inherits it; tests/unit/test_flink_cluster_config.py checks the
# defaults themselves.
for _component in ("JOB", "WRITER", "DISPATCHER", "DASHBOARD", "SERVING"):
    os.environ.setdefault(f"PZ_PRIORITY__{_component}", "0")


def _distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="session")
def services_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for a private stack: tmp run dir, free ports, shared jars."""
    run_dir: Path = tmp_path_factory.mktemp("run")
    SHARED_JARS_DIR.mkdir(parents=True, exist_ok=True)
    (run_dir / "jars").symlink_to(SHARED_JARS_DIR, target_is_directory=True)
    redis_port, kafka_port, controller_port, rest_port, rpc_port, *metrics_ports = (
        _distinct_free_ports(9)
    )
    return Settings(
        run_dir=str(run_dir),
        redis=RedisSettings(port=redis_port),
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{kafka_port}",
            controller_port=controller_port,
        ),
        flink=FlinkSettings(rest_port=rest_port, rpc_port=rpc_port),
        # User ids are pseudonymised end to end in every test stack (tests/identity.py).
        privacy=PrivacySettings(admin_token=ADMIN_TOKEN, hmac_secret=TEST_HMAC_SECRET),
        # A/B attribution windows short enough for a test to wait them out.
        features=FeatureSettings(
            attribution_window_s=15,
            attribution_wait_for_exposure_s=15,
            triggers=TriggerSettings(rules_file=str(TEST_TRIGGER_RULES)),
        ),
        # Propensity labels and versions soon enough for a test to see several.
        learning=LearningSettings(propensity_label_window_s=2, propensity_publish_every=20),
        metrics=MetricsSettings(
            job_port=metrics_ports[0],
            writer_port=metrics_ports[1],
            serving_port=metrics_ports[2],
            dashboard_port=metrics_ports[3],
        ),
    )


@pytest.fixture(scope="session")
def jars(services_settings: Settings) -> JarPaths:
    """Kafka broker jars + Flink Kafka connector, fetched once (see infra/pom.xml)."""
    return ensure_jars(services_settings)


@pytest.fixture(scope="session")
def redis_server(services_settings: Settings) -> Iterator[Settings]:
    """A Redis for the whole session; yields the settings that reach it."""
    redis_mod.start(services_settings)
    try:
        yield services_settings
    finally:
        redis_mod.stop(services_settings)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free and below 65536 too."""
    ports: set[int] = set()
    while len(ports) < n:
        port = free_port()
        if port + redis_cluster_mod.BUS_PORT_OFFSET < 65536 and not port_open(
            "127.0.0.1", port + redis_cluster_mod.BUS_PORT_OFFSET
        ):
            ports.add(port)
    return sorted(ports)


@pytest.fixture(scope="session")
def redis_cluster(services_settings: Settings) -> Iterator[Settings]:
    """A 3-master Redis Cluster for the whole session; yields the settings that reach it."""
    nodes = tuple(f"127.0.0.1:{port}" for port in _cluster_ports(3))
    registry = services_settings.run_path / "feast-cluster" / "registry.db"
    settings = services_settings.model_copy(
        update={
            "redis": services_settings.redis.model_copy(update={"cluster_nodes": nodes}),
            "feast": FeastSettings(registry_path=str(registry)),
        }
    )
    redis_cluster_mod.start(settings)
    try:
        yield settings
    finally:
        redis_cluster_mod.stop(settings)


@pytest.fixture(scope="session")
def kafka_broker(services_settings: Settings, jars: JarPaths) -> Iterator[Settings]:
    """A KRaft Kafka with all pipeline topics; yields the settings that reach it."""
    kafka_mod.start(services_settings)
    try:
        kafka_mod.ensure_topics(services_settings)
        yield services_settings
    finally:
        kafka_mod.stop(services_settings)


# The real pipeline (Flink job, writer, gRPC server) on top of these services.
# ... and each failure summed up in a few lines at the end of the output.
pytest_plugins = ["tests.fixtures_pipeline", "tests.failure_digest"]
