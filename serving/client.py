"""Typed Python client for the Recommender and Collector services.

Every call carries a deadline (``deadline_s``), so a stuck server costs the caller a
bounded wait. Errors surface as ``grpc.RpcError`` with the server's status code.
With ``api_key`` every call carries it (``x-api-key`` metadata) for a server with access
control on (UNAUTHENTICATED without a known key, PERMISSION_DENIED without the method's
scope); Admin calls also carry ``admin_token`` (``authorization: Bearer``) when given.

    with RecommenderClient("127.0.0.1:50051", deadline_s=0.2, api_key=key) as client:
        response = client.recommend("u-7", k=10)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from personalization.settings import Settings
from personalization.v1 import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.codec import wire_to_event


class RecommenderClient:
    def __init__(
        self,
        target: str,
        deadline_s: float = 1.0,
        *,
        collect_deadline_s: float | None = None,
        max_message_bytes: int | None = None,
        admin_token: str = "",
        tls_root_cert: bytes | None = None,
        api_key: str = "",
        tls_client_cert: bytes | None = None,
        tls_client_key: bytes | None = None,
    ) -> None:
        options: list[tuple[str, Any]] = []
        if max_message_bytes:
            options += [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ]
        self.deadline_s = deadline_s
        # Collect waits for Kafka acks server-side, so it needs a longer deadline.
        self.collect_deadline_s = collect_deadline_s or deadline_s
        self._metadata: tuple[tuple[str, str], ...] = (("x-api-key", api_key),) if api_key else ()
        self._admin_metadata = self._metadata + (
            (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        )
        if tls_root_cert is not None:
            # A client certificate and key for servers that require mutual TLS.
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_root_cert,
                private_key=tls_client_key,
                certificate_chain=tls_client_cert,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._recommender = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._collector = recommender_pb2_grpc.CollectorStub(self._channel)
        self._admin = recommender_pb2_grpc.AdminStub(self._channel)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, api_key: str = "", deadline_s: float | None = None
    ) -> RecommenderClient:
        """A client for the configured server; ``deadline_s`` overrides the configured
        per-call deadline (Collect keeps the Kafka ack timeout on top of it)."""
        cfg = settings.serving
        deadline = deadline_s or cfg.client_deadline_s
        return cls(
            f"{cfg.host}:{cfg.port}",
            deadline_s=deadline,
            collect_deadline_s=cfg.collect_ack_timeout_s + deadline,
            max_message_bytes=cfg.max_message_bytes,
            admin_token=settings.privacy.admin_token,
            api_key=api_key,
        )

    def recommend(
        self,
        user_id: str,
        k: int = 0,
        context: events_pb2.EventContext | Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
        *,
        deadline_s: float | None = None,
    ) -> recommender_pb2.RecommendResponse:
        request = recommender_pb2.RecommendRequest(
            user_id=user_id, k=k, exclude_item_ids=list(exclude)
        )
        if isinstance(context, events_pb2.EventContext):
            request.context.CopyFrom(context)
        elif context:
            request.context.CopyFrom(events_pb2.EventContext(**dict(context)))
        response: recommender_pb2.RecommendResponse = self._recommender.Recommend(
            request, timeout=deadline_s or self.deadline_s, metadata=self._metadata
        )
        return response

    def get_user_profile(
        self, user_id: str, *, deadline_s: float | None = None
    ) -> recommender_pb2.UserProfile:
        profile: recommender_pb2.UserProfile = self._recommender.GetUserProfile(
            recommender_pb2.GetUserProfileRequest(user_id=user_id),
            timeout=deadline_s or self.deadline_s,
            metadata=self._metadata,
        )
        return profile

    def collect(
        self, events: Sequence[Mapping[str, Any]], *, deadline_s: float | None = None
    ) -> recommender_pb2.CollectResponse:
        """Send wire-form event dicts; raises ValueError naming the first one a proto
        cannot represent (content problems come back per index in ``rejected``)."""
        protos = []
        for index, payload in enumerate(events):
            try:
                protos.append(wire_to_event(payload))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"event {index}: {exc}") from exc
        response: recommender_pb2.CollectResponse = self._collector.Collect(
            recommender_pb2.CollectRequest(events=protos),
            timeout=deadline_s or self.collect_deadline_s,
            metadata=self._metadata,
        )
        return response

    def forget_user(
        self, user_id: str, reason: str = "", *, deadline_s: float | None = None
    ) -> recommender_pb2.AdminReply:
        """Erase a user everywhere (admin token or `admin` key); returns the audit id."""
        reply: recommender_pb2.AdminReply = self._admin.ForgetUser(
            recommender_pb2.ForgetUserRequest(user_id=user_id, reason=reason),
            timeout=deadline_s or self.collect_deadline_s,
            metadata=self._admin_metadata,
        )
        return reply

    def set_model_version(
        self,
        model: str,
        action: str,
        version: str = "",
        reason: str = "",
        *,
        deadline_s: float | None = None,
    ) -> recommender_pb2.AdminReply:
        """Roll a model back or promote a version (admin token or `admin` key)."""
        reply: recommender_pb2.AdminReply = self._admin.SetModelVersion(
            recommender_pb2.SetModelVersionRequest(
                model=model, action=action, version=version, reason=reason
            ),
            timeout=deadline_s or self.collect_deadline_s,
            metadata=self._admin_metadata,
        )
        return reply

    def set_consent(
        self,
        user_id: str,
        personalization: bool,
        reason: str = "",
        *,
        deadline_s: float | None = None,
    ) -> recommender_pb2.AdminReply:
        reply: recommender_pb2.AdminReply = self._admin.SetConsent(
            recommender_pb2.SetConsentRequest(
                user_id=user_id, personalization=personalization, reason=reason
            ),
            timeout=deadline_s or self.collect_deadline_s,
            metadata=self._admin_metadata,
        )
        return reply

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
