"""The dispatcher on real Kafka, delivering to a real HTTP receiver on 127.0.0.1 that
fails, stalls and refuses on purpose; Triggers.Subscribe resuming from a position.

Each test has topics of its own (``triggers`` and ``triggers_dlq`` under unique names)
and its own consumer group, so nothing another test produced is delivered here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dispatcher.metrics import dispatcher_metrics
from dispatcher.process import DispatcherStats, build_endpoints, run_dispatcher
from dispatcher.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from dispatcher.subscribe import POSITIONED_HEADER, serve
from ops.infra.processes import free_port
from personalization.access import RECOMMEND, TRIGGERS_READ, create_key, write_keys_file
from personalization.settings import (
    DispatcherSettings,
    ServingSettings,
    Settings,
    WebhookSettings,
)
from personalization.triggers import Trigger
from personalization.v1 import triggers_pb2, triggers_pb2_grpc
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SECRET = "receiver-secret"
SECRET_ENV = "PZ_TEST_WEBHOOK_SECRET"


# --- a receiver that misbehaves on purpose ------------------------------------------------


@dataclass
class Received:
    key: str
    attempt: int
    body: bytes
    headers: dict[str, str]
    status: int


@dataclass
class Receiver:
    """``plan(key, attempt) -> (status, stall_s)`` decides each answer."""

    plan: Callable[[str, int], tuple[int, float]]
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def delivered_keys(self) -> list[str]:
        with self.lock:
            return [r.key for r in self.received if r.status == 200]

    def attempts(self, key: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.key == key]


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[Callable[[str, int], tuple[int, float]]], Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def make(plan: Callable[[str, int], tuple[int, float]]) -> Receiver:
        receiver = Receiver(plan)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = self.rfile.read(length)
                key = self.headers.get(IDEMPOTENCY_HEADER, "")
                attempt = int(self.headers.get("X-PZ-Attempt", "0"))
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.peak = max(receiver.peak, receiver.in_flight)
                status, stall_s = receiver.plan(key, attempt)
                time.sleep(stall_s)
                with receiver.lock:
                    receiver.in_flight -= 1
                    receiver.received.append(
                        Received(key, attempt, payload, dict(self.headers), status)
                    )
                answer = b"ok" if status == 200 else b"no"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the dispatcher gave up waiting (the stall test)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/pz"
        return receiver

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


# --- topics, settings, a dispatcher in a thread ----------------------------------------


def _settings(base: Settings, *hooks: WebhookSettings, **dispatcher: Any) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    kafka = base.kafka.model_copy(
        update={"triggers_topic": f"triggers-{suffix}", "triggers_dlq_topic": f"tdlq-{suffix}"}
    )
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    created = admin.create_topics(
        [NewTopic(t, 2, 1) for t in (kafka.triggers_topic, kafka.triggers_dlq_topic)]
    )
    for future in created.values():
        future.result(timeout=30)
    section = DispatcherSettings(
        webhooks=hooks, consumer_group=f"pz-dispatch-{suffix}", port=free_port(), **dispatcher
    )
    return base.model_copy(update={"kafka": kafka, "dispatcher": section})


def _hook(url: str, **fields: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "name": "receiver",
        "url": url,
        "secret_env": SECRET_ENV,
        "timeout_s": 1.0,
        "max_attempts": 4,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.1,
    }
    values.update(fields)
    return WebhookSettings(**values)


def _produce(settings: Settings, records: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for i, value in enumerate(records):
        producer.produce(settings.kafka.triggers_topic, value, key=str(i).encode())
    assert producer.flush(30) == 0


def _triggers(n: int, rule: str = "cart_abandoned", start_ms: int = 1_000) -> list[Trigger]:
    return [Trigger(f"p-user{i}", rule, start_ms + i, {"items": [f"i{i}"]}) for i in range(n)]


class Running:
    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.stats: DispatcherStats | None = None
        self.endpoints = build_endpoints(settings)

        def run() -> None:
            self.stats = run_dispatcher(settings, self.stop, endpoints=self.endpoints)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> DispatcherStats:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        for endpoint in self.endpoints:
            endpoint.close()
        assert self.stats is not None
        return self.stats


def _committed(settings: Settings) -> tuple[int, int]:
    """(committed offsets summed, end offsets summed) of the dispatcher's group."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.dispatcher.consumer_group,
        }
    )
    try:
        parts = [TopicPartition(settings.kafka.triggers_topic, p) for p in (0, 1)]
        committed = consumer.committed(parts, timeout=10)
        ends = [consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts]
        return sum(max(0, tp.offset) for tp in committed), sum(ends)
    finally:
        consumer.close()


def _dead_letters(settings: Settings, expected: int) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"dlq-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.triggers_dlq_topic])
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(json.loads(msg.value() or b""))
        return out
    finally:
        consumer.close()


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


# --- webhooks -------------------------------------------------------------------------


def test_500s_then_success_is_retried_and_delivered_once_per_key(
    kafka_broker: Settings, receiver_factory: Any
) -> None:
    receiver = receiver_factory(lambda key, attempt: (500 if attempt < 3 else 200, 0.0))
    settings = _settings(kafka_broker, _hook(receiver.url))
    triggers = _triggers(5)
    _produce(settings, [t.to_json().encode() for t in triggers])
    retries_before = dispatcher_metrics().retries.labels("receiver")._value.get()
    running = Running(settings)
    try:
        wait_for(lambda: len(receiver.delivered_keys()) == 5, 30, "5 deliveries")
        wait_for(lambda: _committed(settings) == (5, 5), 15, "offsets committed")
    finally:
        stats = running.close()
    keys = receiver.delivered_keys()
    assert len(set(keys)) == 5 and len(keys) == 5, "each idempotency key delivered once"
    for key in keys:
        attempts = receiver.attempts(key)
        assert [a.attempt for a in attempts] == [1, 2, 3]
        assert [a.status for a in attempts] == [500, 500, 200]
        bodies = {a.body for a in attempts}
        assert len(bodies) == 1, "every attempt sends the same body"
        for a in attempts:
            assert verify(
                SECRET.encode(),
                a.headers[TIMESTAMP_HEADER],
                a.headers[SIGNATURE_HEADER],
                a.body,
                now_s=time.time(),
            )
    payloads = {
        json.loads(next(iter({a.body for a in receiver.attempts(k)})))["user"]["id"] for k in keys
    }
    assert payloads == {t.user_id for t in triggers}
    assert stats.delivered == 5 and stats.dead_lettered == 0
    retries = dispatcher_metrics().retries.labels("receiver")._value.get() - retries_before
    assert retries == 10


def test_a_stalled_request_times_out_and_is_retried(
    kafka_broker: Settings, receiver_factory: Any
) -> None:
    receiver = receiver_factory(lambda key, attempt: (200, 1.5 if attempt == 1 else 0.0))
    settings = _settings(kafka_broker, _hook(receiver.url, timeout_s=0.3))
    _produce(settings, [t.to_json().encode() for t in _triggers(2)])
    running = Running(settings)
    try:
        wait_for(
            lambda: len([r for r in receiver.received if r.attempt == 2]) == 2, 30, "2 retries"
        )
        # The stalled first attempts are logged by the receiver once their stall is over.
        wait_for(lambda: len(receiver.received) == 4, 10, "the stalled attempts to end")
        wait_for(lambda: _committed(settings) == (2, 2), 15, "offsets committed")
    finally:
        stats = running.close()
    assert stats.delivered == 2 and stats.dead_lettered == 0
    for key in {r.key for r in receiver.received}:
        # The stalled first attempt was answered too late; the second one counted.
        assert sorted(a.attempt for a in receiver.attempts(key)) == [1, 2]


def test_always_failing_goes_to_the_dlq_with_the_reason(
    kafka_broker: Settings, receiver_factory: Any
) -> None:
    down = receiver_factory(lambda key, attempt: (503, 0.0))
    refusing = receiver_factory(lambda key, attempt: (400, 0.0))
    settings = _settings(
        kafka_broker,
        _hook(down.url, name="down", max_attempts=3),
        _hook(refusing.url, name="refusing", rules=("browse_intent",)),
    )
    carts, browses = _triggers(2), _triggers(1, rule="browse_intent", start_ms=9_000)
    _produce(settings, [t.to_json().encode() for t in carts + browses] + [b'{"user_id": 1}'])
    running = Running(settings)
    try:
        letters = _dead_letters(settings, expected=5)
        wait_for(lambda: _committed(settings) == (4, 4), 15, "offsets committed")
    finally:
        stats = running.close()
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], []).append(letter)
    # 3 triggers x "down" (no filter), the browse_intent one x "refusing", the bad record.
    assert sorted((r, len(v)) for r, v in by_reason.items()) == [
        ("invalid_trigger", 1),
        ("webhook_failed", 3),
        ("webhook_rejected", 1),
    ]
    for letter in by_reason["webhook_failed"]:
        assert letter["endpoint"] == "down" and letter["url"] == down.url
        assert letter["last_status"] == 503 and letter["attempts"] == 3
        assert letter["idempotency_key"].startswith("trg_")
    (rejected,) = by_reason["webhook_rejected"]
    assert (rejected["endpoint"], rejected["attempts"], rejected["last_status"]) == (
        "refusing",
        1,
        400,
    )
    assert rejected["trigger"]["trigger"] == "browse_intent"
    assert len(down.received) == 9 and len(refusing.received) == 1
    assert stats.dead_lettered == 4 and stats.invalid == 1


def test_concurrency_per_endpoint_is_capped(kafka_broker: Settings, receiver_factory: Any) -> None:
    receiver = receiver_factory(lambda key, attempt: (200, 0.15))
    settings = _settings(kafka_broker, _hook(receiver.url, concurrency=2))
    _produce(settings, [t.to_json().encode() for t in _triggers(8)])
    running = Running(settings)
    try:
        wait_for(lambda: len(receiver.delivered_keys()) == 8, 30, "8 deliveries")
    finally:
        running.close()
    assert receiver.peak == 2
    assert running.endpoints[0].peak_in_flight == 2


def test_a_stop_mid_retry_commits_nothing_and_the_restart_delivers(
    kafka_broker: Settings, receiver_factory: Any
) -> None:
    healthy = threading.Event()
    receiver = receiver_factory(lambda key, attempt: (200 if healthy.is_set() else 500, 0.0))
    settings = _settings(kafka_broker, _hook(receiver.url, backoff_base_s=5.0, backoff_max_s=5.0))
    _produce(settings, [t.to_json().encode() for t in _triggers(3)])
    first = Running(settings)
    try:
        wait_for(lambda: len(receiver.received) >= 3, 30, "first attempts")
    finally:
        first.close()  # in the middle of the backoff: abandoned, not dead-lettered
    assert _committed(settings) == (0, 3)
    assert _dead_letters(settings, expected=1) == []
    healthy.set()
    second = Running(settings)
    try:
        wait_for(lambda: len(set(receiver.delivered_keys())) == 3, 30, "delivered after restart")
        wait_for(lambda: _committed(settings) == (3, 3), 15, "offsets committed")
    finally:
        second.close()


# --- Triggers.Subscribe ----------------------------------------------------------------


def _subscribe(
    settings: Settings, request: triggers_pb2.SubscribeRequest, n: int, key: str = ""
) -> list[triggers_pb2.TriggerMessage]:
    target = f"{settings.dispatcher.host}:{settings.dispatcher.port}"
    metadata = (("x-api-key", key),) if key else ()
    with grpc.insecure_channel(target) as channel:
        stub = triggers_pb2_grpc.TriggersStub(channel)
        stream = stub.Subscribe(request, metadata=metadata, timeout=20)
        out = []
        for message in stream:
            out.append(message)
            if len(out) == n:
                stream.cancel()
                break
        return out


def test_subscribe_filters_by_rule_and_resumes_from_a_position(
    kafka_broker: Settings, tmp_path: Path
) -> None:
    keys, reader = create_key((), "reader", [TRIGGERS_READ])
    keys, recommender = create_key(keys, "web", [RECOMMEND])
    keys_file = tmp_path / "keys.json"
    write_keys_file(keys_file, keys)
    settings = _settings(kafka_broker)
    settings = settings.model_copy(
        update={"serving": ServingSettings(api_keys_file=str(keys_file))}
    )
    carts = _triggers(4)
    noise = _triggers(3, rule="browse_intent", start_ms=5_000)
    # All on one partition (same key), interleaved: the order is the topic's.
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for trigger in [x for pair in zip(carts, noise, strict=False) for x in pair] + carts[3:]:
        producer.produce(settings.kafka.triggers_topic, trigger.to_json().encode(), key=b"k")
    assert producer.flush(30) == 0
    server = serve(settings)
    try:
        request = triggers_pb2.SubscribeRequest(
            rules=["cart_abandoned"], start=triggers_pb2.SubscribeRequest.EARLIEST
        )
        first = _subscribe(settings, request, 2, reader)
        assert [m.user_id for m in first] == ["p-user0", "p-user1"]
        assert all(m.rule == "cart_abandoned" and m.user_id_kind == "pseudonym" for m in first)
        assert json.loads(first[0].evidence_json) == {"items": ["i0"]}
        # Resume after the second: the rest, no repeat, and a trigger produced later.
        late = Trigger("p-late", "cart_abandoned", 99_000, {})
        producer.produce(settings.kafka.triggers_topic, late.to_json().encode(), key=b"k")
        assert producer.flush(30) == 0
        resumed = _subscribe(
            settings,
            triggers_pb2.SubscribeRequest(
                rules=["cart_abandoned"], positions=[first[-1].resume_from]
            ),
            3,
            reader,
        )
        assert [m.user_id for m in resumed] == ["p-user2", "p-user3", "p-late"]
        keys_seen = [m.idempotency_key for m in first + resumed]
        assert len(set(keys_seen)) == 5
        # Access control: no key, a key without the scope, a bad position.
        for key, code in (
            ("", grpc.StatusCode.UNAUTHENTICATED),
            (recommender, grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                _subscribe(settings, request, 1, key)
            assert refused.value.code() == code
        with pytest.raises(grpc.RpcError) as bad:
            bad_position = triggers_pb2.PartitionOffset(partition=99, offset=0)
            _subscribe(settings, triggers_pb2.SubscribeRequest(positions=[bad_position]), 1, reader)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=1.0).wait()


def test_subscribe_latest_sees_what_fires_after_it_is_positioned(kafka_broker: Settings) -> None:
    settings = _settings(kafka_broker)
    _produce(settings, [t.to_json().encode() for t in _triggers(2)])  # before: not seen
    server = serve(settings)
    target = f"{settings.dispatcher.host}:{settings.dispatcher.port}"
    try:
        with grpc.insecure_channel(target) as channel:
            stream = triggers_pb2_grpc.TriggersStub(channel).Subscribe(
                triggers_pb2.SubscribeRequest(), timeout=20
            )
            assert dict(stream.initial_metadata())[POSITIONED_HEADER] == "1"
            late = Trigger("p-after", "quick_exit", 7, {})
            _produce(settings, [late.to_json().encode()])
            message = next(stream)
            stream.cancel()
        assert (message.user_id, message.rule) == ("p-after", "quick_exit")
    finally:
        server.stop(grace=1.0).wait()


# --- identity: raw ids of consenting users, ResolveUser ----------------------------------


def test_raw_ids_only_for_consenting_users_and_resolve_user_is_admin_only(
    redis_server: Settings, kafka_broker: Settings
) -> None:
    from dispatcher.identity import IdentityResolver, directory_key, run_identity_directory
    from feature_repo.names import USER_PROFILE
    from personalization.feature_store import encode_value, field_key, redis_key
    from personalization.redis_client import redis_client
    from tests.conftest import ADMIN_TOKEN
    from tests.identity import stored_id

    settings = _settings(kafka_broker, identity_directory=True, raw_user_ids=True)
    suffix = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(
        update={
            "clickstream_topic": f"clicks-{suffix}",
            "purchase_topic": f"purchases-{suffix}",
            "engagement_topic": f"engagement-{suffix}",
            "audit_topic": f"audit-{suffix}",
        }
    )
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    names = (*kafka.event_topics, kafka.audit_topic)
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in names]).values():
        future.result(timeout=30)
    settings = settings.model_copy(
        update={"kafka": kafka, "feast": settings.feast.model_copy(update={"project": suffix})}
    )
    alice, bob, carol = (f"{name}-{suffix}" for name in ("alice", "bob", "carol"))
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for user, kind, props in (
        (alice, "product_view", {}),
        (bob, "product_view", {}),
        (bob, "consent", {"personalization": "denied"}),
        (carol, "product_view", {}),
    ):
        event = {
            "event_id": uuid.uuid4().hex,
            "user_id": user,
            "event_type": kind,
            "event_time": int(time.time() * 1000),
            "properties": props,
        }
        producer.produce(kafka.clickstream_topic, json.dumps(event).encode(), user.encode())
    assert producer.flush(30) == 0
    client = redis_client(settings.redis, request_path=False, timeout_s=5.0)
    stop = threading.Event()
    directory = threading.Thread(target=run_identity_directory, args=(settings, stop), daemon=True)
    directory.start()
    try:
        wait_for(
            lambda: client.get(directory_key(suffix, stored_id(settings, carol))) is not None,
            30,
            "the directory to take the events",
        )
    finally:
        stop.set()
        directory.join(timeout=30)
    assert client.get(directory_key(suffix, stored_id(settings, alice))) == alice.encode()
    assert client.get(directory_key(suffix, stored_id(settings, bob))) is None  # withdrew
    # Consent as the job stores it: alice granted, carol's row says denied.
    for user, consent in ((alice, "granted"), (carol, "denied")):
        client.execute_command(
            "HSET",
            redis_key(suffix, USER_PROFILE, stored_id(settings, user)),
            field_key(USER_PROFILE, "consent"),
            encode_value("string", consent).SerializeToString(),
        )
    resolver = IdentityResolver(settings)
    ids = [stored_id(settings, u) for u in (alice, bob, carol, f"dave-{suffix}")]
    assert resolver.resolve_many(ids) == [
        (alice, "raw"),
        (ids[1], "pseudonym"),
        (ids[2], "pseudonym"),
        (ids[3], "pseudonym"),
    ]
    # Pseudonyms only, whatever the directory holds, with raw_user_ids off.
    off = settings.model_copy(
        update={"dispatcher": settings.dispatcher.model_copy(update={"raw_user_ids": False})}
    )
    assert IdentityResolver(off).resolve_many(ids[:1]) == [(ids[0], "pseudonym")]

    server = serve(settings, identity=resolver)
    target = f"{settings.dispatcher.host}:{settings.dispatcher.port}"
    try:
        with grpc.insecure_channel(target) as channel:
            stub = triggers_pb2_grpc.TriggersStub(channel)
            admin_md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
            reply = stub.ResolveUser(
                triggers_pb2.ResolveUserRequest(pseudonym=ids[0], reason="support #1"),
                metadata=admin_md,
                timeout=10,
            )
            assert reply.user_id == alice
            for request, metadata, code in (
                (ids[0], (), grpc.StatusCode.UNAUTHENTICATED),
                (ids[0], (("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
                (ids[1], admin_md, grpc.StatusCode.NOT_FOUND),
                ("", admin_md, grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ResolveUser(
                        triggers_pb2.ResolveUserRequest(pseudonym=request),
                        metadata=metadata,
                        timeout=10,
                    )
                assert refused.value.code() == code
    finally:
        server.stop(grace=1.0).wait()
    # Every answered or not-found resolution left an audit record naming the actor.
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"audit-{suffix}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([kafka.audit_topic])
    audits: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(audits) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            audits.append(json.loads(msg.value() or b""))
    consumer.close()
    assert [(a["action"], a["subject"], a["actor"]) for a in audits] == [
        ("resolve_user", ids[0], "admin-token"),
        ("resolve_user", ids[1], "admin-token"),
    ]
    assert audits[0]["detail"] == "support #1"
