"""The Recommender and Collector gRPC servicers: validation and status codes.

Status codes:

- INVALID_ARGUMENT: empty ``user_id``, ``k`` < 0 or > ``serving.max_k``; a request whose
  bytes do not decode as the method's message (garbage, invalid UTF-8 in a string; see
  ``serving/async_handlers.py``).
- RESOURCE_EXHAUSTED: a Collect batch larger than ``serving.max_batch_events``; any
  request larger than ``serving.max_message_bytes`` (refused by gRPC itself).
- Collect answers OK for a batch with invalid events: they are reported per index in
  ``rejected`` and dead-lettered (see ``serving/collector.py``).
- UNAVAILABLE: Kafka did not acknowledge a Collect batch in time; GetUserProfile while
  Redis is unreachable (a profile has no meaningful fallback) or while its audit record
  is not acknowledged.
- UNAUTHENTICATED / PERMISSION_DENIED: with access control on (``serving.api_keys_file``),
  a call without a known key / without the method's scope, refused before any servicer
  runs (``serving/auth.py``).
- Unknown users are not NOT_FOUND: Recommend answers with the trending fallback and
  GetUserProfile with ``found=false``.
- SimilarItems: INVALID_ARGUMENT for an empty ``item_id`` or ``k`` out of range,
  NOT_FOUND for an item the catalog does not hold.

A profile read is audited (``serving/audit.py``): before the profile is read, a
``profile:read`` record naming the reader (``key:<id>``, or ``anonymous`` without access
control) and the user (the stored pseudonym) is acknowledged by the audit topic. A
server without Kafka (``--no-collector``) has no audit log and serves profiles unaudited
(it logs a WARNING at start). Recommend is not audited: it runs on the event loop and
writes its exposure record instead.

The servicers are plain synchronous classes (unit tests call them directly);
``serving/async_handlers.py`` serves them on the asyncio server.
"""

from __future__ import annotations

import time

import grpc

from personalization.access import PROFILE_READ, AccessPolicy
from personalization.privacy import audit_record, pseudonymizer
from personalization.settings import Settings
from personalization.v1 import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.audit import AuditLog, AuditUnavailable
from serving.auth import actor_or_abort
from serving.collector import CollectUnavailable, EventCollector
from serving.online_features import StoreUnavailable
from serving.proto_mapping import (
    collect_response,
    profile_message,
    recommend_response,
    similar_response,
)
from serving.recommender import Recommender
from serving.similar import UnknownItem

__all__ = ["ANONYMOUS", "PROFILE_READ_ACTION", "CollectorServicer", "RecommenderServicer"]

# How the audit trail names a profile read, and its reader without access control.
PROFILE_READ_ACTION = "profile:read"
ANONYMOUS = "anonymous"


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(
        self,
        settings: Settings,
        recommender: Recommender,
        *,
        audit: AuditLog | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self._recommender = recommender
        self._audit = audit
        self._access = access
        # Features are stored under the pseudonym the job derived (privacy.hmac_secret).
        self._stored_id = pseudonymizer(settings.privacy.hmac_secret)
        self._default_k = settings.serving.default_k
        self._max_k = settings.serving.max_k

    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if request.k < 0 or request.k > self._max_k:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"k must be 0..{self._max_k} (0 = default)"
            )
        k = request.k or self._default_k
        rec = self._recommender.recommend(
            self._stored_id(user_id),
            k,
            exclude=request.exclude_item_ids,
            country=request.context.country,
            device=request.context.device,
        )
        return recommend_response(rec)

    def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.SimilarItemsResponse:
        item_id = request.item_id.strip()
        if not item_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_id is required")
        if request.k < 0 or request.k > self._max_k:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"k must be 0..{self._max_k} (0 = default)"
            )
        user_id = request.user_id.strip()
        try:
            items = self._recommender.similar(
                item_id,
                request.k or self._default_k,
                self._stored_id(user_id) if user_id else "",
                exclude=request.exclude_item_ids,
                country=request.context.country,
                device=request.context.device,
            )
        except UnknownItem:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item {item_id[:128]!r} in the catalog")
        return similar_response(item_id, items)

    def GetUserProfile(
        self, request: recommender_pb2.GetUserProfileRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UserProfile:
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        subject = self._stored_id(user_id)
        if self._audit is not None:
            record = audit_record(PROFILE_READ_ACTION, subject, actor=self._reader(context))
            try:
                self._audit.write(record)
            except AuditUnavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            features = self._recommender.user_features(subject)
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return profile_message(user_id, features, int(time.time() * 1000))

    def _reader(self, context: grpc.ServicerContext) -> str:
        """Who reads (for the audit record): the caller's key, or ``anonymous``."""
        if self._access is None:
            return ANONYMOUS
        return actor_or_abort(self._access, context, PROFILE_READ)


class CollectorServicer(recommender_pb2_grpc.CollectorServicer):
    def __init__(self, settings: Settings, collector: EventCollector) -> None:
        self._collector = collector
        self._max_batch = settings.serving.max_batch_events

    def Collect(
        self, request: recommender_pb2.CollectRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.CollectResponse:
        if len(request.events) > self._max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(request.events)} events > max batch {self._max_batch}",
            )
        events: list[events_pb2.Event] = list(request.events)
        try:
            result = self._collector.collect(events)
        except CollectUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return collect_response(result)
