"""The ``Triggers`` gRPC service: ``Subscribe`` (server streaming) and ``ResolveUser``.

Served by the dispatcher process on its own port (``dispatcher.host``/``port``), not by
serving: a subscription is a long-lived stream holding a Kafka consumer and a thread,
while serving's processes are tuned for ~1 ms unary calls on an event loop and replicate
behind SO_REUSEPORT with no state. Streams there would take threads from Collect and
Admin and tie a subscriber to one replica. The dispatcher already reads ``triggers`` and
holds the identity resolution, so the stream shows exactly what webhooks get.

``Subscribe`` reads the topic without a consumer group (``assign``, no commits): the
client owns its position. Each message carries ``resume_from`` (its partition, offset +
1); a client that sends back the last one per partition resumes without a gap. Partitions
not given start at the end (``LATEST``, resolved when the call starts) or the beginning
(``EARLIEST``). Once positioned, the server sends its initial metadata
(``pz-positioned: 1``), so a client knows from when on it misses nothing.

Access control is the platform's (``personalization/access.py``, the keys file of
``serving.api_keys_file``, reloaded on change): ``Subscribe`` needs ``triggers:read``,
``ResolveUser`` ``admin`` (the legacy ``privacy.admin_token`` counts). Without a keys
file ``Subscribe`` is open, as serving's RPCs are, and ``ResolveUser`` needs the admin
token; with neither it is refused (PERMISSION_DENIED).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dispatcher.envelope import idempotency_key, wanted
from dispatcher.identity import IdentityResolver
from dispatcher.metrics import dispatcher_metrics
from personalization.access import (
    ADMIN,
    TRIGGERS_READ,
    AccessPolicy,
    Decision,
    Outcome,
    load_keys_file,
)
from personalization.keys_watcher import KeysFileWatcher, file_signature
from personalization.privacy import audit_record
from personalization.settings import Settings
from personalization.triggers import parse_trigger
from personalization.v1 import triggers_pb2, triggers_pb2_grpc

__all__ = ["TriggersService", "access_policy", "serve"]

log = logging.getLogger(__name__)

POSITIONED_HEADER = "pz-positioned"
_POLL_S = 0.25
_BATCH = 500


def access_policy(settings: Settings) -> tuple[AccessPolicy | None, KeysFileWatcher | None]:
    """The policy of the keys file (and its watcher), or of the admin token alone, or
    None when neither is configured."""
    path = settings.serving.api_keys_file
    token = settings.privacy.admin_token
    if not path:
        return (AccessPolicy((), admin_token=token) if token else None), None
    loaded = file_signature(Path(path))
    policy = AccessPolicy(load_keys_file(path), admin_token=token)
    return policy, KeysFileWatcher(path, policy, settings.serving.api_keys_reload_s, loaded=loaded)


def _code(decision: Decision) -> grpc.StatusCode:
    if decision.outcome is Outcome.PERMISSION_DENIED:
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAUTHENTICATED


class TriggersService(triggers_pb2_grpc.TriggersServicer):
    def __init__(
        self,
        settings: Settings,
        policy: AccessPolicy | None,
        identity: IdentityResolver,
        *,
        producer: Producer | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._identity = identity
        self._producer = producer
        self._slots = threading.BoundedSemaphore(settings.dispatcher.max_subscribers)
        self._m = dispatcher_metrics()

    def _authorize(self, context: grpc.ServicerContext, scope: str, *, open_without: bool) -> str:
        """The caller's actor name, or abort. ``open_without``: allowed to anyone when no
        keys file is configured (the admin token alone guards only ResolveUser)."""
        if open_without and not self._settings.serving.api_keys_file:
            return "anonymous"
        if self._policy is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "needs access control configured")
        assert self._policy is not None
        decision = self._policy.authorize(context.invocation_metadata(), scope)
        if not decision.allowed:
            context.abort(_code(decision), decision.reason)
        return decision.key.actor if decision.key is not None else "anonymous"

    # --- Subscribe -----------------------------------------------------------------------

    def Subscribe(
        self, request: triggers_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[triggers_pb2.TriggerMessage]:
        self._authorize(context, TRIGGERS_READ, open_without=True)
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many subscribers")
        self._m.subscribers.inc()
        try:
            yield from self._stream(request, context)
        finally:
            self._m.subscribers.dec()
            self._slots.release()

    def _stream(
        self, request: triggers_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[triggers_pb2.TriggerMessage]:
        topic = self._settings.kafka.triggers_topic
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.kafka.bootstrap_servers,
                # Never joins the group (assign) nor commits: the client keeps its position.
                "group.id": f"pz-subscribe-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            consumer.assign(self._assignment(consumer, topic, request, context))
            context.send_initial_metadata(((POSITIONED_HEADER, "1"),))
            rules = frozenset(request.rules)
            while context.is_active():
                messages = consumer.consume(num_messages=_BATCH, timeout=_POLL_S)
                chosen = []
                for msg in messages:
                    if msg.error() is not None:
                        continue
                    trigger = parse_trigger(msg.value() or b"")
                    if trigger is not None and wanted(rules, trigger.trigger):
                        chosen.append((msg, trigger))
                ids = self._identity.resolve_many([t.user_id for _, t in chosen])
                for (msg, trigger), (user_id, kind) in zip(chosen, ids, strict=True):
                    self._m.streamed.inc()
                    yield triggers_pb2.TriggerMessage(
                        rule=trigger.trigger,
                        kind=trigger.kind,
                        user_id=user_id,
                        user_id_kind=kind,
                        time_ms=trigger.time_ms,
                        evidence_json=json.dumps(trigger.evidence, sort_keys=True),
                        idempotency_key=idempotency_key(trigger),
                        resume_from=triggers_pb2.PartitionOffset(
                            partition=msg.partition() or 0, offset=(msg.offset() or 0) + 1
                        ),
                    )
        finally:
            consumer.close()

    def _assignment(
        self,
        consumer: Consumer,
        topic: str,
        request: triggers_pb2.SubscribeRequest,
        context: grpc.ServicerContext,
    ) -> list[TopicPartition]:
        try:
            metadata = consumer.list_topics(topic, timeout=5.0)
        except KafkaException as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"kafka: {exc}")
        partitions = sorted(metadata.topics[topic].partitions)
        given: dict[int, int] = {}
        for position in request.positions:
            if position.partition not in partitions or position.offset < 0:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"position {position.partition}:{position.offset}: partitions are "
                    f"{partitions}, offsets >= 0",
                )
            given[position.partition] = position.offset
        earliest = request.start == triggers_pb2.SubscribeRequest.EARLIEST
        out = []
        for partition in partitions:
            if partition in given:
                offset = given[partition]
            elif earliest:
                offset = OFFSET_BEGINNING
            else:
                # The end now, not when fetching starts: the stream begins at a known point.
                _low, offset = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=5.0
                )
            out.append(TopicPartition(topic, partition, offset))
        return out

    # --- ResolveUser ---------------------------------------------------------------------

    def ResolveUser(
        self, request: triggers_pb2.ResolveUserRequest, context: grpc.ServicerContext
    ) -> triggers_pb2.ResolveUserReply:
        actor = self._authorize(context, ADMIN, open_without=False)
        if not request.pseudonym:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pseudonym is required")
        if not self._settings.dispatcher.identity_directory:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "dispatcher.identity_directory is off"
            )
        if self._producer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no audit trail: not resolving")
        assert self._producer is not None
        # Audited before answering, like every Admin action: no acknowledgement, no answer.
        record = audit_record("resolve_user", request.pseudonym, actor=actor, detail=request.reason)
        acked: list[Any] = []
        self._producer.produce(
            self._settings.kafka.audit_topic,
            record.encode(),
            request.pseudonym.encode(),
            on_delivery=lambda err, _msg: acked.append(err),
        )
        self._producer.flush(5.0)
        if acked != [None]:
            context.abort(grpc.StatusCode.UNAVAILABLE, "audit record not acknowledged")
        try:
            raw = self._identity.lookup(request.pseudonym)
        except Exception as exc:  # Redis down or refusing: the caller may retry
            log.warning("identity directory unreadable: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, "identity directory unavailable")
        if raw is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "pseudonym not in the identity directory")
        return triggers_pb2.ResolveUserReply(user_id=raw)


def serve(
    settings: Settings,
    *,
    identity: IdentityResolver | None = None,
) -> grpc.Server:
    """Start the Triggers service (and health) on ``dispatcher.host:port``; returns the
    started server."""
    d = settings.dispatcher
    policy, watcher = access_policy(settings)
    if policy is None or not settings.serving.api_keys_file:
        log.warning("Triggers.Subscribe is open to anyone who can reach %s:%d", d.host, d.port)
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True}
    )
    service = TriggersService(
        settings, policy, identity or IdentityResolver(settings), producer=producer
    )
    # A thread per open stream, plus a few for ResolveUser and health.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=d.max_subscribers + 4))
    triggers_pb2_grpc.add_TriggersServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{d.host}:{d.port}")
    server.start()
    if watcher is not None:
        watcher.start()
    log.info("Triggers service on %s:%d", d.host, d.port)
    return server
