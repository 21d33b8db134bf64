"""Serving's answers as protobuf messages (``personalization.v1.recommender``).

The one place that knows both the domain objects (a :class:`Recommendation`, a user's
features, a Collect result) and the wire messages, so servicers stay about status codes.
"""

from __future__ import annotations

from personalization.v1 import recommender_pb2
from serving.collector import CollectResult
from serving.online_features import UserFeatures
from serving.ranking_types import RankedItem
from serving.recommender import Recommendation

__all__ = ["collect_response", "profile_message", "recommend_response", "similar_response"]


def recommend_response(rec: Recommendation) -> recommender_pb2.RecommendResponse:
    response = recommender_pb2.RecommendResponse(
        strategy=rec.strategy,
        personalized=rec.personalized,
        fallback_reason=rec.fallback_reason,
        recommendation_id=rec.recommendation_id,
        features_age_ms=rec.features_age_ms,
        experiment=rec.experiment,
        variant=rec.variant,
    )
    add = response.items.add  # in place: cheaper than building and copying messages
    for item in rec.items:
        add(
            item_id=item.item_id,
            score=item.score,
            reason=item.reason,
            category=item.category,
            source=item.source,
        )
    return response


def similar_response(item_id: str, items: list[RankedItem]) -> recommender_pb2.SimilarItemsResponse:
    response = recommender_pb2.SimilarItemsResponse(item_id=item_id)
    add = response.items.add
    for item in items:
        add(
            item_id=item.item_id,
            score=item.score,
            reason=item.reason,
            category=item.category,
            source=item.source,
        )
    return response


def profile_message(
    user_id: str, features: UserFeatures | None, now_ms: int
) -> recommender_pb2.UserProfile:
    if features is None:
        return recommender_pb2.UserProfile(user_id=user_id, found=False, features_age_ms=-1)
    return recommender_pb2.UserProfile(
        user_id=user_id,
        found=True,
        counts=features.counts,
        interests=[
            recommender_pb2.CategoryInterest(category=c, score=s) for c, s in features.interests
        ],
        recent_items=features.recent_items,
        cart_items=features.cart_items,
        purchased_items=features.purchased_items,
        session_count=features.session_count,
        session_events=features.session_events,
        session_duration_s=features.session_duration_s,
        last_seen_ms=features.last_seen_ms,
        recency_days=features.recency_days(now_ms),
        frequency=features.frequency,
        monetary=features.monetary,
        segments=features.segments,
        last_device=features.device,
        last_country=features.country,
        features_age_ms=features.features_age_ms,
        consent=features.consent,
    )


def collect_response(result: CollectResult) -> recommender_pb2.CollectResponse:
    return recommender_pb2.CollectResponse(
        accepted=result.accepted,
        rejected=[
            recommender_pb2.RejectedEvent(index=index, reason=reason)
            for index, reason in result.rejected
        ],
    )
