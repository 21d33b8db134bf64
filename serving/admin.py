"""Administration over gRPC: forget a user, override consent, move a model's version.

Every call must carry ``authorization: Bearer <privacy.admin_token>``; without a token
configured the service answers FAILED_PRECONDITION ("disabled"), a wrong or missing
token UNAUTHENTICATED. With access control on (``serving.api_keys_file``, see
``personalization/access.py``) a key with the ``admin`` scope works as well as the token;
then a missing or unknown credential is UNAUTHENTICATED, a key without the scope
PERMISSION_DENIED, and the audit record names the key (``key:<id>``) or ``admin-token``.

Each action writes an audit record to the audit topic before it returns, so nothing is
erased or changed without a trace.

ForgetUser acts twice: at once on the online store (a tombstone replaces the user's row,
see ``writer/process.py``), and through the stream (an ``erasure`` event clears
the user's keyed state in the Flink job, ordered after the user's earlier events).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Callable

import grpc

from feature_repo.names import USER_PROFILE
from personalization.access import ADMIN, AccessPolicy
from personalization.events import CONSENT, CONSENT_PROPERTY, ERASURE
from personalization.feature_updates import FeatureUpdate
from personalization.model_registry import ModelRegistry, UnknownVersion
from personalization.online_store import OnlineStoreWriter
from personalization.privacy import audit_record, pseudonymizer
from personalization.redis_client import REDIS_ERRORS
from personalization.settings import Settings
from personalization.v1 import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.audit import AuditLog, AuditUnavailable
from serving.auth import actor_or_abort
from serving.collector import CollectUnavailable, EventCollector


def bearer_token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


class AdminServicer(recommender_pb2_grpc.AdminServicer):
    def __init__(
        self,
        settings: Settings,
        collector: EventCollector,
        *,
        store_writer: OnlineStoreWriter | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        access: AccessPolicy | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._access = access
        self._token = settings.privacy.admin_token
        self._collector = collector
        self._writer = store_writer or OnlineStoreWriter(settings)
        self._pseudonym = pseudonymizer(settings.privacy.hmac_secret)
        self._registry = ModelRegistry(
            self._writer.redis,
            settings.feast.project,
            keep=settings.learning.registry_keep_versions,
        )
        # Shared with GetUserProfile's audit when the app passes one (serving/app.py).
        self._audit = audit or AuditLog(settings)
        self._now_ms = now_ms

    def _authorize(self, context: grpc.ServicerContext) -> str:
        """The actor of the call (for its audit record), or abort."""
        if self._access is not None:
            return actor_or_abort(self._access, context, ADMIN)
        if not self._token:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "admin API disabled (no token)")
        if not hmac.compare_digest(bearer_token(context), self._token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token required")
        return "admin-token"

    def _write_audit(self, record: str, context: grpc.ServicerContext) -> None:
        try:
            self._audit.write(record)
        except AuditUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    def _send_control(self, event: events_pb2.Event, context: grpc.ServicerContext) -> None:
        try:
            result = self._collector.collect([event])
        except CollectUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if result.rejected:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.rejected[0][1])

    def ForgetUser(
        self, request: recommender_pb2.ForgetUserRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.AdminReply:
        actor = self._authorize(context)
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        subject = self._pseudonym(user_id)
        now = self._now_ms()
        record = audit_record("forget", subject, actor=actor, detail=request.reason)
        self._write_audit(record, context)
        self._writer.erase([FeatureUpdate(USER_PROFILE, subject, now * 1000, {}, erase=True)])
        self._send_control(
            events_pb2.Event(
                event_id=f"erase-{uuid.uuid4().hex}",
                user_id=user_id,
                event_type=ERASURE,
                event_time_ms=now,
            ),
            context,
        )
        return recommender_pb2.AdminReply(audit_id=_audit_id(record), subject=subject)

    def SetConsent(
        self, request: recommender_pb2.SetConsentRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.AdminReply:
        actor = self._authorize(context)
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        subject = self._pseudonym(user_id)
        value = "granted" if request.personalization else "denied"
        record = audit_record(f"consent:{value}", subject, actor=actor, detail=request.reason)
        self._write_audit(record, context)
        self._send_control(
            events_pb2.Event(
                event_id=f"consent-{uuid.uuid4().hex}",
                user_id=user_id,
                event_type=CONSENT,
                event_time_ms=self._now_ms(),
                properties={CONSENT_PROPERTY: value},
            ),
            context,
        )
        return recommender_pb2.AdminReply(audit_id=_audit_id(record), subject=subject)

    def SetModelVersion(
        self, request: recommender_pb2.SetModelVersionRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.AdminReply:
        actor = self._authorize(context)
        model = request.model.strip()
        if not model or request.action not in ("rollback", "promote"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "model and action (rollback | promote) required"
            )
        version = request.version.strip() or None
        # Check first, then audit, then act: the audit names the version that will be set.
        try:
            if version is not None:
                self._registry.get(model, version)
            elif not self._registry.versions(model):
                raise UnknownVersion(f"{model} has no versions")
        except UnknownVersion as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except REDIS_ERRORS as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"model registry unavailable: {exc}")
        subject = f"model:{model}"
        detail = f"{request.action} {version or '(default)'}: {request.reason}".strip()
        record = audit_record(f"model:{request.action}", subject, actor=actor, detail=detail)
        self._write_audit(record, context)
        try:
            move = (
                self._registry.rollback if request.action == "rollback" else self._registry.promote
            )
            pointer = move(model, version)
        except UnknownVersion as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc.args[0]))
        except REDIS_ERRORS as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"model registry unavailable: {exc}")
        return recommender_pb2.AdminReply(
            audit_id=_audit_id(record), subject=f"{subject}@{pointer.version}"
        )

    def close(self) -> None:
        self._audit.close()


def _audit_id(record: str) -> str:
    return str(json.loads(record)["audit_id"])
