"""End to end through gRPC: Collect -> Kafka -> Flink -> Feast/Redis -> Recommend.

Runs on the real services and processes started by the fixtures (Redis, Kafka, the
Flink job on a MiniCluster, the online-store writer and the gRPC server).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest

from personalization.settings import Settings
from serving.client import RecommenderClient
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(grpc_server: Settings):
    with RecommenderClient.from_settings(grpc_server) as c:
        yield c


def view(user: str, item: str, category: str, t: int, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "event_type": "product_view",
        "item_id": item,
        "category": category,
        "price": 20.0,
        "event_time": t,
        "context": {"device": "mobile", "country": "NL", "session_id": f"s-{user}"},
    }


def test_collected_views_steer_recommendations_and_profile(client: RecommenderClient):
    tag = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    # A crowd makes "gadgets" trend, so the user's own interest has to win on merit.
    crowd = [
        view(f"crowd-{tag}-{i % 20}", f"gadget-{tag}-{i % 6}", f"gadgets-{tag}", now + i, i)
        for i in range(120)
    ]
    result = client.collect(crowd)
    assert result.accepted == len(crowd) and not result.rejected

    user = f"shopper-{tag}"
    teas = [view(user, f"tea-{tag}-{i}", f"tea-{tag}", now + 200 + i * 1000, i) for i in range(5)]
    result = client.collect(teas)
    assert result.accepted == 5 and not result.rejected

    def profile_updated():
        try:
            p = client.get_user_profile(user)
        except grpc.RpcError as exc:
            # Redis answers within a 50 ms socket timeout; on a loaded 2-core machine a
            # read can miss it, and the RPC then says UNAVAILABLE, as it should: retry.
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None
        return p if p.found and p.counts.get("product_view_5m") == 5 else None

    profile = wait_for(profile_updated, 60, "the user's profile to show 5 views")
    assert profile.counts["product_view_1h"] == 5
    assert profile.interests[0].category == f"tea-{tag}"
    assert list(profile.recent_items)[:2] == [f"tea-{tag}-4", f"tea-{tag}-3"]
    assert profile.last_device == "mobile" and profile.last_country == "NL"

    def ranked_tea_first():
        r = client.recommend(user, k=5)
        return r if r.items and r.items[0].category == f"tea-{tag}" else None

    response = wait_for(ranked_tea_first, 30, "tea to be ranked first")
    assert response.personalized
    assert response.recommendation_id
    assert all(item.reason for item in response.items)
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_gets_trending_fallback(client: RecommenderClient):
    response = client.recommend(f"nobody-{uuid.uuid4().hex}", k=5)
    assert not response.personalized
    assert response.fallback_reason == "unknown_user"
    assert response.items, "trending fallback should not be empty once items exist"


def test_collect_reports_invalid_events_by_index(client: RecommenderClient):
    now = int(time.time() * 1000)
    events = [
        view(f"ok-{uuid.uuid4().hex[:6]}", "i-1", "c", now, 1),
        {"user_id": "", "event_type": "page_view", "event_time": now},
        {"user_id": "x", "event_type": "teleport", "event_time": now},
    ]
    result = client.collect(events)
    assert result.accepted == 1
    assert {(r.index, r.reason) for r in result.rejected} == {
        (1, "missing_user_id"),
        (2, "unknown_event_type"),
    }


def test_bad_requests_get_invalid_argument(client: RecommenderClient):
    with pytest.raises(grpc.RpcError) as err:
        client.recommend("", k=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        client.recommend("someone", k=10_000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
