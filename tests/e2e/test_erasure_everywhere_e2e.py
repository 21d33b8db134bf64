"""Erasure, opt-out and retention reach everything the job keeps (issue 13), end to end
on the real pipeline: Kafka, the Flink job, the writer, Redis and the gRPC server.

Event time: the session stack's watermark is near "now" (every test sends live-time
events), so events sent days in the past are late: the timers they arm are already
due and fire with the next watermark advance, which the next live-time event brings.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer

from feature_repo.names import USER_CF, USER_PROFILE
from flink_jobs.learning import LearnerConfig, init_vector
from personalization import feature_store as fs
from personalization.settings import Settings
from serving.client import RecommenderClient
from tests.identity import stored_id
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

DAY_MS = 86_400_000
MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def client(grpc_server: Settings):
    with RecommenderClient.from_settings(grpc_server) as c:
        yield c


def shopping(user: str, t0: int, tag: str) -> list[dict[str, Any]]:
    """Six product views (the CF learns each) and a cart add that is never bought, over
    the seven minutes from ``t0``."""
    events: list[dict[str, Any]] = [
        {
            "event_id": f"{user}-{tag}-v{i}",
            "user_id": user,
            "event_type": "product_view",
            "item_id": f"erase-sku-{i}",
            "category": "lamps",
            "event_time": t0 + i * MINUTE_MS,
        }
        for i in range(6)
    ]
    events.append(
        {
            "event_id": f"{user}-{tag}-cart",
            "user_id": user,
            "event_type": "add_to_cart",
            "item_id": "erase-sku-5",
            "category": "lamps",
            "price": 40.0,
            "event_time": t0 + 7 * MINUTE_MS,
        }
    )
    return events


def stored(settings: Settings, view: str, user: str, name: str) -> Any:
    """One feature of a user's row in Redis (None when the view has no value)."""
    row = (
        fs.feature_store(settings)
        .get_online_features(
            features=[f"{view}:{name}"], entity_rows=[{"user_id": stored_id(settings, user)}]
        )
        .to_dict()
    )
    return row[name][0]


def cf_vector(settings: Settings, user: str) -> np.ndarray | None:
    vector = stored(settings, USER_CF, user, "cf_vector")
    return np.asarray(vector, dtype=np.float32) if vector else None


def live_t0() -> int:
    """The start of a trip that ends now: event times past the wall clock would hold
    the shared watermark ahead of every later test's live events."""
    return int(time.time() * 1000) - 8 * MINUTE_MS


def clock(client: RecommenderClient) -> None:
    """A live-time event of another user: moves the shared watermark to about now."""
    who = f"clock-{uuid.uuid4().hex[:8]}"
    event = {
        "event_id": who,
        "user_id": who,
        "event_type": "page_view",
        "event_time": int(time.time() * 1000),
    }
    assert client.collect([event]).accepted == 1


def triggers_for(settings: Settings, subject: str, settle_s: float) -> list[dict[str, Any]]:
    """Every committed trigger of ``subject`` (read_committed, from the beginning), read
    after ``settle_s`` so transactions of the checkpoints in between are committed."""
    time.sleep(settle_s)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    found: list[dict[str, Any]] = []
    try:
        consumer.subscribe([settings.kafka.triggers_topic])
        idle_until = time.monotonic() + 5
        while time.monotonic() < idle_until:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            idle_until = time.monotonic() + 3
            record = json.loads(msg.value())
            if record.get("user_id") == subject:
                found.append(record)
    finally:
        consumer.close()
    return found


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def test_forget_user_reaches_factors_timers_and_impressions(
    client: RecommenderClient, grpc_server: Settings
):
    settings = grpc_server
    erased, kept = (f"erase-{uuid.uuid4().hex[:8]}", f"keep-{uuid.uuid4().hex[:8]}")
    # Impressions and an exposure first (their live time moves the watermark), then a
    # day-old shopping trip whose cart-abandon timer waits for the next advance. A live
    # view by someone else first, so the catalog has an item to show.
    seed = f"seed-{uuid.uuid4().hex[:8]}"
    live = shopping(seed, live_t0(), "s")[:2]
    assert client.collect(live).accepted == 2
    wait_for(lambda: list(client.recommend(erased, k=5).items) or None, 60, "an answer with items")
    wait_for(
        lambda: stored(settings, USER_PROFILE, erased, "impressed_items") or None,
        60,
        "the erased user's impressions in the store",
    )
    t0 = int(time.time() * 1000) - DAY_MS
    assert client.collect(shopping(erased, t0, "a") + shopping(kept, t0, "a")).accepted == 14
    for user in (erased, kept):
        wait_for(
            lambda u=user: stored(settings, USER_PROFILE, u, "cart_items") == ["erase-sku-5"],
            60,
            f"{user}'s cart in the store",
        )
    old = wait_for(lambda: cf_vector(settings, erased), 60, "the erased user's CF factors")

    client.forget_user(erased, reason="e2e erasure")
    wait_for(
        lambda: stored(settings, USER_PROFILE, erased, "consent") == "erased",
        60,
        "the tombstone in the store",
    )
    assert cf_vector(settings, erased) is None  # the factors' view went with the hash
    assert not client.recommend(erased, k=5).personalized  # nothing to personalise on

    # The watermark passes both carts' deadlines: the kept user's trigger fires (so the
    # timer was due), the erased user's does not (its state, timer owner, is gone).
    clock(client)
    settle = 3 * settings.flink.checkpoint_interval_ms / 1000

    def kept_abandoned() -> list[dict[str, Any]] | None:
        clock(client)  # each timer that fires may arm the next, due at the next advance
        found = triggers_for(settings, stored_id(settings, kept), 0)
        return [t for t in found if t["trigger"] == "cart_abandoned"] or None

    kept_triggers = wait_for(kept_abandoned, 90, "the kept user's cart_abandoned trigger")
    assert len(kept_triggers) == 1
    erased_triggers = triggers_for(settings, stored_id(settings, erased), settle)
    assert [t for t in erased_triggers if t["trigger"] == "cart_abandoned"] == []

    # The next interaction starts a fresh CF vector from the user's initial factors,
    # not the old vector plus one update.
    # (At the wall clock: an event older than the erasure would meet its tombstone.)
    again = shopping(erased, int(time.time() * 1000), "b")[:1]
    assert client.collect(again).accepted == 1
    new = wait_for(lambda: cf_vector(settings, erased), 60, "the fresh CF factors")
    assert stored(settings, USER_PROFILE, erased, "events_total") == 1
    start = init_vector(
        stored_id(settings, erased), "u", LearnerConfig.from_settings(settings.learning)
    )
    assert distance(new, start) < distance(old, start) / 2, (new, old, start)


def test_opt_out_removes_learned_factors_and_opt_in_starts_from_nothing(
    client: RecommenderClient, grpc_server: Settings
):
    settings = grpc_server
    user = f"optout-{uuid.uuid4().hex[:8]}"
    assert client.collect(shopping(user, live_t0(), "a")[:6]).accepted == 6
    old = wait_for(lambda: cf_vector(settings, user), 60, "the user's CF factors")

    client.set_consent(user, personalization=False, reason="e2e opt-out")
    wait_for(
        lambda: stored(settings, USER_PROFILE, user, "consent") == "denied",
        60,
        "the denied profile row",
    )
    assert cf_vector(settings, user) is None  # learned factors removed from the store
    assert stored(settings, USER_PROFILE, user, "events_total") == 0

    client.set_consent(user, personalization=True, reason="e2e opt-in")
    wait_for(
        lambda: stored(settings, USER_PROFILE, user, "consent") == "granted",
        60,
        "the granted profile row",
    )
    assert cf_vector(settings, user) is None and not client.recommend(user, k=5).personalized
    assert client.collect(shopping(user, live_t0(), "b")[:1]).accepted == 1
    new = wait_for(lambda: cf_vector(settings, user), 60, "fresh CF factors after opt-in")
    start = init_vector(
        stored_id(settings, user), "u", LearnerConfig.from_settings(settings.learning)
    )
    assert distance(new, start) < distance(old, start) / 2


def job_metric(settings: Settings, name: str) -> float:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{settings.metrics.job_port}/metrics", timeout=5
    ) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
    )


def test_retention_forgets_a_user_inactive_past_the_retention_period(
    client: RecommenderClient, grpc_server: Settings
):
    settings = grpc_server
    days = settings.privacy.retention_days
    assert days > 0
    user = f"retain-{uuid.uuid4().hex[:8]}"
    old_t0 = int(time.time() * 1000) - (days + 30) * DAY_MS
    expired_before = job_metric(settings, "pz_job_users_expired_total")
    # Accepted: older than the retention period, but within the admission window.
    assert client.collect(shopping(user, old_t0, "a")[:3]).accepted == 3
    wait_for(
        lambda: stored(settings, USER_PROFILE, user, "events_total") == 3,
        60,
        "the old events in the store",
    )

    # The session's end fires first and arms the expiry, due at the next watermark
    # advance (both behind the shared watermark): each poll moves it on.
    def expired() -> bool:
        clock(client)
        return job_metric(settings, "pz_job_users_expired_total") > expired_before

    wait_for(expired, 90, "the job to expire the inactive user", every_s=1.0)
    # The keyed state is gone: one more event from the same old day starts a new
    # profile, it does not add a fourth event to the old one.
    late = shopping(user, old_t0 + 10 * MINUTE_MS, "b")[:1]
    assert client.collect(late).accepted == 1
    wait_for(
        lambda: stored(settings, USER_PROFILE, user, "events_total") == 1,
        60,
        "a fresh profile of one event",
    )
