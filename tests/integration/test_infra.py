"""Real Redis and Kafka started by ops.infra on free ports in a tmp run dir, driven through
the :class:`~ops.infra.service.Service` interface and ``personalize infra``."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from ops import cli, stack
from ops.infra import kafka_broker as kafka_mod
from ops.infra import redis_server as redis_mod
from ops.infra.kafka_broker import KAFKA
from ops.infra.processes import read_pid, write_pid
from ops.infra.redis_server import REDIS
from ops.infra.registry import STACK_SERVICES
from ops.infra.service import Service
from personalization.settings import Settings

pytestmark = pytest.mark.integration


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis(host=settings.redis.host, port=settings.redis.port, socket_timeout=2)


def test_redis_ping_and_persistence_config(redis_server: Settings) -> None:
    client = _redis(redis_server)
    assert client.ping()
    client.set("pz:infra:test", "1")
    assert client.get("pz:infra:test") == b"1"
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("dir") == {"dir": str(REDIS.data_dir(redis_server))}
    assert REDIS.status(redis_server).healthy
    assert "PING ok" in str(REDIS.status(redis_server))


def test_redis_second_start_is_noop(redis_server: Settings) -> None:
    pid = redis_mod.process(redis_server).pid()
    assert pid is not None
    REDIS.start(redis_server)
    assert redis_mod.process(redis_server).pid() == pid


def test_kafka_topics_created(kafka_broker: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_broker.kafka.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    for name in kafka_broker.kafka.all_topics:
        assert name in topics, name
        assert len(topics[name].partitions) == kafka_broker.kafka.partitions
    # Idempotent: a second call creates nothing.
    assert kafka_mod.ensure_topics(kafka_broker) == []


def test_kafka_topic_configs(kafka_broker: Settings) -> None:
    """The job's outputs take append time (a replay of old events is not deleted by the
    next retention check); the item-factor feed keeps event time and is kept by size;
    every other topic has its configured time retention, dead letters the shortest and
    the audit trail the longest."""
    k = kafka_broker.kafka
    admin = AdminClient({"bootstrap.servers": k.bootstrap_servers})
    wanted = kafka_mod.topic_configs(kafka_broker)
    assert set(wanted) >= {k.triggers_topic, k.dlq_topic, k.feature_updates_topic}
    # Every topic of the pipeline is configured, each with a retention of its own.
    assert set(wanted) == set(k.all_topics)
    # The item catalog is compacted (the newest record per item, by key), not timed.
    assert wanted[k.catalog_topic] == {"cleanup.policy": "compact"}
    untimed = (k.item_factors_topic, k.catalog_topic)
    timed = {t: int(c["retention.ms"]) for t, c in wanted.items() if t not in untimed}
    assert all(ms > 0 for ms in timed.values()), timed
    assert timed[k.dlq_topic] == k.dlq_retention_ms == min(timed.values())
    assert timed[k.audit_topic] == k.audit_retention_ms == max(timed.values())
    assert k.dlq_retention_ms < k.retention_ms < k.audit_retention_ms
    for topic in (*k.event_topics, k.triggers_topic, k.feature_updates_topic):
        assert timed[topic] == k.retention_ms, topic
    assert timed[k.exposures_topic] == timed[k.ab_outcomes_topic] == k.ab_retention_ms
    # Erasure tombstones outlive every changelog row a writer could still replay.
    assert kafka_broker.privacy.erasure_tombstone_ttl_s * 1000 > timed[k.feature_updates_topic]
    # A topic of an older run dir, with another retention, is set right by ensure_topics.
    kafka_mod._apply_topic_configs(admin, {k.dlq_topic: {"retention.ms": "604800000"}}, 15)
    assert kafka_mod.ensure_topics(kafka_broker) == []
    dlq = ConfigResource(ResourceType.TOPIC, k.dlq_topic)
    got = admin.describe_configs([dlq])[dlq].result(timeout=15)
    assert got["retention.ms"].value == str(k.dlq_retention_ms)
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in wanted]
    for resource, fut in admin.describe_configs(resources).items():
        got = {name: entry.value for name, entry in fut.result(timeout=15).items()}
        for name, value in wanted[resource.name].items():
            assert got[name] == value, (resource.name, name, got[name])
    feed = wanted[k.item_factors_topic]
    assert feed["message.timestamp.type"] == "CreateTime" and feed["retention.ms"] == "-1"
    # A record stamped 1970 by its producer is read back with the broker's time.
    delivered: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})
    # A well-formed record of its own user: the topic is the session's, and other tests
    # read every trigger in it.
    probe = {"user_id": f"topic-config-probe-{uuid.uuid4().hex[:8]}", "trigger": "probe"}
    producer.produce(
        k.triggers_topic,
        value=json.dumps(probe).encode(),
        partition=0,
        timestamp=1_000,
        on_delivery=lambda err, msg: delivered.append((msg.partition(), msg.offset())),
    )
    assert producer.flush(15) == 0 and delivered
    consumer = Consumer(
        {"bootstrap.servers": k.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex}"}
    )
    try:
        consumer.assign([TopicPartition(k.triggers_topic, *delivered[0])])
        msg = consumer.poll(15)
        assert msg is not None and msg.error() is None
        kind, stamp = msg.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and stamp > 1_000_000_000_000, (kind, stamp)
    finally:
        consumer.close()


def test_kafka_produce_consume_round_trip(kafka_broker: Settings) -> None:
    k = kafka_broker.kafka
    marker = uuid.uuid4().hex
    producer = Producer({"bootstrap.servers": k.bootstrap_servers, "acks": "all"})
    for i in range(10):
        producer.produce(k.clickstream_topic, key=f"user-{i}", value=f"{marker}:{i}")
    assert producer.flush(15) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": k.bootstrap_servers,
            "group.id": f"test-{marker}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([k.clickstream_topic])
    seen: set[str] = set()
    # Other tests of the session share this topic (the Taobao replay puts ~100k events
    # in it), so read in batches until our ten show up, bounded in time.
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 10 and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=1.0):
                assert msg.error() is None, msg.error()
                value = (msg.value() or b"").decode()
                if value.startswith(marker):
                    seen.add(value)
    finally:
        consumer.close()
    assert seen == {f"{marker}:{i}" for i in range(10)}


def test_kafka_second_start_is_noop(kafka_broker: Settings) -> None:
    pid = kafka_mod.process(kafka_broker).pid()
    assert pid is not None
    KAFKA.start(kafka_broker)
    assert kafka_mod.process(kafka_broker).pid() == pid
    assert "metadata ok" in str(KAFKA.status(kafka_broker))


@pytest.mark.parametrize("service", STACK_SERVICES, ids=lambda s: s.name)
def test_service_status_of_a_running_service(
    service: Service, redis_server: Settings, kafka_broker: Settings
) -> None:
    """The typed status of each service the stack runs on, its data dir and its log."""
    status = service.status(kafka_broker)
    assert status.running and status.healthy, status
    assert service.healthy(kafka_broker)
    assert status.name == service.name
    assert status.address == service.address(kafka_broker)
    assert status.data_dir == service.data_dir(kafka_broker)
    assert status.data_dir.is_dir()
    assert service.log_path(kafka_broker).stat().st_size > 0
    assert str(status).startswith(f"{service.name}: running pid {status.pid} on ")
    # The same line `personalize status` prints.
    assert stack.status(kafka_broker)[service.name] == str(status)


def _infra(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``personalize infra ARGV`` on ``settings``; returns what it printed."""
    args = cli.build_parser().parse_args(["infra", *argv])
    assert args.func(settings, args) == 0
    return capsys.readouterr().out


def _lines(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def test_cli_infra_status_stop_start(
    redis_server: Settings, kafka_broker: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """``personalize infra``: status of both by default, stop and start one by name."""
    settings = kafka_broker
    out = _infra(settings, capsys, "status")
    assert len(_lines(out, "redis: running pid ")) == 1, out
    assert len(_lines(out, "kafka: running pid ")) == 1, out

    pid = REDIS.status(settings).pid
    out = _infra(settings, capsys, "stop", "redis")
    assert "redis: stopped" in out
    assert _lines(out, "redis: stopped (") and not _lines(out, "kafka:"), out
    assert not REDIS.status(settings).running
    out = _infra(settings, capsys, "start", "redis")
    restarted = REDIS.status(settings)
    assert restarted.healthy and restarted.pid != pid
    assert str(restarted) in out.splitlines()
    assert KAFKA.status(settings).healthy  # untouched


def test_stale_pidfile_is_ignored(services_settings: Settings) -> None:
    """A pidfile naming a live process that is not ours must not be trusted or killed."""
    proc = redis_mod.process(services_settings)
    original = read_pid(proc.pidfile)
    try:
        write_pid(proc.pidfile, 1)  # pid 1 is alive but certainly not our redis
        assert proc.pid() is None
        assert not proc.stop()  # nothing of ours to stop; pid 1 untouched
    finally:
        if original is not None:
            write_pid(proc.pidfile, original)


def test_stop_and_restart_keeps_data(redis_server: Settings, kafka_broker: Settings) -> None:
    """Stop both services, check they are down, start again (data survives), leave up."""
    client = _redis(redis_server)
    client.set("pz:infra:durable", "yes")
    assert REDIS.stop(redis_server)
    assert not REDIS.status(redis_server).running
    assert not REDIS.stop(redis_server)  # second stop: nothing to do
    REDIS.start(redis_server)
    assert _redis(redis_server).get("pz:infra:durable") == b"yes"

    assert KAFKA.stop(kafka_broker)
    proc = kafka_mod.process(kafka_broker)
    assert not proc.is_running()
    assert not KAFKA.status(kafka_broker).running
    write_pid(proc.pidfile, 1)  # stale pidfile (e.g. after a crash or reboot)
    kafka_mod.start(kafka_broker)  # storage already formatted: must not reformat
    assert proc.pid() not in (None, 1)
    topics = AdminClient({"bootstrap.servers": kafka_broker.kafka.bootstrap_servers}).list_topics(
        timeout=10
    )
    assert set(kafka_broker.kafka.all_topics) <= set(topics.topics)
