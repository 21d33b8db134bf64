"""Privacy end to end: ForgetUser and consent through gRPC on the real pipeline."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from personalization.settings import Settings
from serving.client import RecommenderClient
from tests.identity import stored_id
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(grpc_server: Settings):
    with RecommenderClient.from_settings(grpc_server) as c:
        yield c


def views(user: str, n: int, start: int, t0: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{user}-{start + i}",
            "user_id": user,
            "event_type": "product_view",
            "item_id": f"book-{i}",
            "category": "books",
            "event_time": t0 + i,
        }
        for i in range(n)
    ]


def events_total(client: RecommenderClient, user: str) -> int | None:
    """Views in the profile, -1 without a profile, None when the store did not answer in
    time (UNAVAILABLE / DEADLINE_EXCEEDED on a loaded machine: the caller polls again)."""
    try:
        profile = client.get_user_profile(user)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise
    return profile.counts.get("product_view_24h", 0) if profile.found else -1


def answered_total(client: RecommenderClient, user: str) -> int:
    total: int = wait_for(lambda: events_total(client, user), 30, "the profile to be read")
    return total


def audit_records(settings: Settings, subject: str) -> list[dict]:
    """The subject's records in the audit topic, read to the topic's current end (audit
    writes are acknowledged before the RPC answers, so every record of a call is there)."""
    topic = settings.kafka.audit_topic
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"audit-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    found: list[dict] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    continue
                record = json.loads(msg.value())
                if record["subject"] == subject:
                    found.append(record)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    pending.discard(msg.partition())
        assert not pending, f"audit partitions not read to their end: {pending}"
    finally:
        consumer.close()
    return sorted(found, key=lambda r: r["time_ms"])


def test_forget_user_erases_store_state_and_audits(client: RecommenderClient, grpc_server):
    user = f"forget-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    assert client.collect(views(user, 3, 0, now)).accepted == 3
    wait_for(lambda: events_total(client, user) == 3, 60, "3 views in the profile")

    reply = client.forget_user(user, reason="ticket-42")
    assert reply.audit_id and reply.subject == stored_id(grpc_server, user)
    # The store forgets at once ...
    assert answered_total(client, user) in (-1, 0)
    audit = audit_records(grpc_server, stored_id(grpc_server, user))
    actions = [r for r in audit if r["action"] != "profile:read"]
    assert [r["action"] for r in actions] == ["forget"] and actions[0]["detail"] == "ticket-42"
    # Every profile read above left a record too: who (no keys in this stack), whose, when.
    reads = [r for r in audit if r["action"] == "profile:read"]
    assert reads and all(r["actor"] == "anonymous" for r in reads)
    assert reads[0]["time_ms"] >= now - 1_000

    # ... and the job's keyed state too: the next event starts a brand-new profile.
    later = now + 60_000
    assert client.collect(views(user, 1, 100, later)).accepted == 1
    wait_for(lambda: events_total(client, user) == 1, 60, "a fresh profile with 1 view")


def test_withdrawn_consent_stops_profile_updates(client: RecommenderClient):
    user = f"consent-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    assert client.collect(views(user, 2, 0, now)).accepted == 2
    wait_for(lambda: events_total(client, user) == 2, 60, "2 views in the profile")

    client.set_consent(user, personalization=False, reason="user request")
    wait_for(lambda: events_total(client, user) == 0, 60, "the profile to be emptied")
    assert client.collect(views(user, 4, 10, now + 1000)).accepted == 4
    time.sleep(3)  # give the job time to (not) count them
    assert answered_total(client, user) == 0
    response = client.recommend(user, k=5)
    assert not response.personalized


def test_admin_calls_need_the_token(grpc_server: Settings):
    with RecommenderClient(
        f"{grpc_server.serving.host}:{grpc_server.serving.port}", admin_token="wrong"
    ) as intruder:
        with pytest.raises(grpc.RpcError) as err:
            intruder.forget_user("anyone")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_user_ids_are_stored_only_as_keyed_pseudonyms(client: RecommenderClient, grpc_server):
    """With privacy.hmac_secret set (as in every test stack), the raw id never reaches
    the store: the job keys the user by HMAC(secret, id); serving translates on read."""
    import redis

    from personalization.feature_store import redis_key

    assert grpc_server.privacy.hmac_secret
    user = f"hmac-{uuid.uuid4().hex[:8]}"
    pseudonym = stored_id(grpc_server, user)
    assert pseudonym != user and user not in pseudonym
    now = int(time.time() * 1000)
    assert client.collect(views(user, 2, 0, now)).accepted == 2
    wait_for(lambda: events_total(client, user) == 2, 60, "2 views via the raw id")
    store = redis.Redis(port=grpc_server.redis.port)
    project = grpc_server.feast.project
    try:
        assert store.exists(redis_key(project, "user_profile", pseudonym))
        assert not store.exists(redis_key(project, "user_profile", user))
        # Nothing else in the store names the raw id either (keys are entity-key bytes).
        assert not [k for k in store.scan_iter(count=1000) if user.encode() in k]
    finally:
        store.close()
