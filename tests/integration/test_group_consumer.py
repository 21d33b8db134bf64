"""A consumer-group member that replaces itself (personalization/group_consumer.py), on
real Kafka: the new member resumes at the committed offsets, and a member that cannot
reach its group coordinator is replaced after the stall time.

The broker-restart case that motivated it is exercised end to end by
tests/faults/test_fault_tolerance.py::test_kafka_broker_restart_recovers_by_itself.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ops.infra.processes import free_port
from personalization.group_consumer import REPLACEMENTS, GroupConsumer
from personalization.settings import KafkaSettings, Settings
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


SESSION = {"session.timeout.ms": 6000}


def produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value=value.encode())
    assert producer.flush(30) == 0


def consume_until(consumer: GroupConsumer, n: int, timeout_s: float) -> list[str]:
    got: list[str] = []

    def enough() -> bool:
        for m in consumer.consume(100, 0.2):
            assert m.error() is None, m.error()
            got.append((m.value() or b"").decode())
        return len(got) >= n

    wait_for(enough, timeout_s, f"{n} messages", every_s=0.0)
    return got


def test_a_replaced_member_resumes_at_the_committed_offsets(kafka_broker: Settings) -> None:
    bootstrap = kafka_broker.kafka.bootstrap_servers
    suffix = uuid.uuid4().hex[:8]
    topic = f"group-consumer-{suffix}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    kafka = kafka_broker.kafka.model_copy(update={"group_stall_s": 30.0})
    consumer = GroupConsumer(
        kafka, f"pz-group-{suffix}", [topic], name="test member", options=SESSION
    )
    try:
        first = [f"a{i}" for i in range(50)]
        produce(bootstrap, topic, first)
        assert sorted(consume_until(consumer, 50, 60)) == sorted(first)
        consumer.commit()

        def steady() -> bool:  # statistics come every second: the state may lag a poll
            assert consumer.consume(10, 0.2) == []
            return consumer.health.state == ("up", "steady")

        wait_for(steady, 10, "a steady group state in the statistics", every_s=0.0)
        assert not consumer.health.stalled(time.monotonic() + 3600)

        # Consumed but not committed: the next member must get these again.
        second = [f"b{i}" for i in range(30)]
        produce(bootstrap, topic, second)
        assert sorted(consume_until(consumer, 30, 60)) == sorted(second)
        before = REPLACEMENTS.labels("test member")._value.get()
        consumer.replace()
        assert consumer.replacements == 1
        assert REPLACEMENTS.labels("test member")._value.get() == before + 1

        third = [f"c{i}" for i in range(20)]
        produce(bootstrap, topic, third)
        again = consume_until(consumer, 50, 60)
        assert sorted(again) == sorted(second + third)  # nothing lost, nothing older
        time.sleep(1.0)
        assert consumer.consume(100, 0.5) == []
    finally:
        consumer.close()


def test_a_member_without_a_reachable_coordinator_is_replaced() -> None:
    # Nothing listens on this port: the member never gets past looking for its group
    # coordinator, i.e. it never becomes steady.
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", group_stall_s=2.0)
    consumer = GroupConsumer(
        kafka,
        "pz-nowhere",
        ["nowhere"],
        name="unreachable member",
        options={**SESSION, "socket.timeout.ms": 1000},
    )
    try:

        def replaced() -> bool:
            assert consumer.consume(10, 0.2) == []
            return consumer.replacements >= 1

        wait_for(replaced, 20, "the stalled member to be replaced", every_s=0.0)
        assert consumer.health.state is None or consumer.health.state != ("up", "steady")
    finally:
        consumer.close()
