"""Trigger rules from the YAML rule file in the real job (Kafka in, Flink, Kafka out).

The session's stack runs the rule file ``tests/integration/trigger_rules.yaml`` (the
default three and one rule of each other shape, set in ``tests/conftest.py``). One user's
events set off every shape, and the records on the ``triggers`` topic name the rule,
kind, user, time and evidence. Then the rule state survives a crash of the job: a count
half-way to firing before the crash fires after the restore, its evidence holding the
event from before the crash.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ops import stack
from ops.infra.processes import pid_alive, wait_until
from personalization.feature_store import feature_store
from personalization.settings import Settings
from personalization.trigger_rules import load_rule_file
from tests.conftest import TEST_TRIGGER_RULES
from tests.identity import stored_id
from tests.integration.test_pipeline import consume_all
from tests.waiting import wait_for
from traffic.catalog_import import CatalogImport, import_catalog
from traffic.sender import TrafficSender

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def test_the_session_runs_the_default_rules_unchanged(pipeline: Settings) -> None:
    default = load_rule_file(pipeline.features.triggers.rules_path.parent / "trigger_rules.yaml")
    shipped = load_rule_file(Settings().features.triggers.rules_path)
    assert default[:3] == shipped  # fingerprints included
    assert pipeline.features.triggers.rules_path == TEST_TRIGGER_RULES


def _event(user: str, n: int, kind: str, t: int, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "event_type": kind,
        "event_time": t,
    }
    event.update(extra)
    return event


def _clock(settings: Settings, user: str, after_ms: int) -> None:
    """Event time moves only with events and the watermark is everyone's: one event at
    the current time (past every deadline here) lets the due timers fire."""
    time.sleep(1.0)  # the clock event must not overtake the user's (another partition)
    clock = _event(f"clock-{user}", 0, "page_view", max(after_ms, int(time.time() * 1000)))
    TrafficSender(settings, rate=0).send([clock])


def test_every_rule_shape_fires_in_the_job(pipeline: Settings) -> None:
    user = f"rules-{uuid.uuid4().hex[:8]}"
    t0 = int(time.time() * 1000) - 3 * HOUR_MS
    cat = {"category": "rules-it"}
    events = [
        # it_cheap_views: two cheap views within 5 min (the dear one is filtered out).
        _event(user, 1, "product_view", t0, item_id="it-a", price=20.0, **cat),
        _event(user, 2, "product_view", t0 + 30_000, item_id="it-b", price=99.0, **cat),
        _event(user, 3, "product_view", t0 + MINUTE_MS, item_id="it-c", price=30.0, **cat),
        # it_checkout_abandoned: the checkout page, and no purchase within 10 min.
        _event(user, 4, "page_view", t0 + 2 * MINUTE_MS, context={"page": "/it-checkout/1"}),
        # it_long_dwell: a 75 s look at a product page.
        _event(
            user,
            5,
            "dwell",
            t0 + 3 * MINUTE_MS,
            item_id="it-c",
            context={"page": "/it-p/it-c"},
            properties={"dwell_ms": "75000"},
        ),
        # it_second_purchase: the second purchase (an hour later: the checkout is long due).
        _event(user, 6, "purchase", t0 + HOUR_MS, item_id="it-a", price=20.0, **cat),
        _event(user, 7, "purchase", t0 + HOUR_MS + MINUTE_MS, item_id="it-c", price=30.0, **cat),
    ]
    TrafficSender(pipeline, rate=0).send(events)
    _clock(pipeline, user, t0 + 2 * HOUR_MS)

    mine = stored_id(pipeline, user)
    wanted = {"it_cheap_views", "it_checkout_abandoned", "it_long_dwell", "it_second_purchase"}
    found = consume_all(
        pipeline,
        pipeline.kafka.triggers_topic,
        lambda r: r["user_id"] == mine and r["trigger"] in wanted,
        want=len(wanted),
        timeout_s=90,
    )
    by_name = {r["trigger"]: r for r in found}
    assert set(by_name) == wanted, found

    views = by_name["it_cheap_views"]
    assert (views["kind"], views["time"]) == ("count", t0 + MINUTE_MS)
    assert views["evidence"]["event_ids"] == [f"{user}-1", f"{user}-3"]
    assert views["evidence"]["items"] == ["it-a", "it-c"]

    checkout = by_name["it_checkout_abandoned"]
    assert (checkout["kind"], checkout["time"]) == ("sequence", t0 + 12 * MINUTE_MS)
    assert checkout["evidence"]["first_event"] == f"{user}-4"
    assert checkout["evidence"]["missing"] == ["purchase"]

    dwell = by_name["it_long_dwell"]
    assert (dwell["kind"], dwell["time"]) == ("threshold", t0 + 3 * MINUTE_MS)
    assert dwell["evidence"]["value"] == 75000.0 and dwell["evidence"]["event_id"] == f"{user}-5"

    second = by_name["it_second_purchase"]
    assert second["time"] == t0 + HOUR_MS + MINUTE_MS
    assert (second["evidence"]["milestone"], second["evidence"]["event_id"]) == (2.0, f"{user}-7")


def test_rule_state_survives_a_job_crash(pipeline: Settings) -> None:
    user = f"rules-restore-{uuid.uuid4().hex[:8]}"
    mine = stored_id(pipeline, user)
    t0 = int(time.time() * 1000) - HOUR_MS
    first = _event(user, 1, "product_view", t0, item_id="it-r1", price=10.0, category="rules-it")
    TrafficSender(pipeline, rate=0).send([first])

    # The view is in the checkpointed state once its profile row reached Redis (rows are
    # flushed on checkpoints); then let one more checkpoint complete and crash the job.
    store = feature_store(pipeline)

    def seen() -> int | None:
        got = store.get_online_features(
            features=["user_profile:events_total"], entity_rows=[{"user_id": mine}]
        ).to_dict()["events_total"][0]
        return got or None

    wait_for(seen, 60, "the first view's profile row")
    time.sleep(3 * pipeline.flink.checkpoint_interval_ms / 1000)
    process = stack.FLINK_JOB.process(pipeline)
    pid = process.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 30, what="the job to die")
    stack.start_component(pipeline, stack.FLINK_JOB)
    stack.wait_pipeline_ready(pipeline, timeout_s=180)

    second = _event(
        user, 2, "product_view", t0 + MINUTE_MS, item_id="it-r2", price=10.0, category="rules-it"
    )
    TrafficSender(pipeline, rate=0).send([second])
    found = consume_all(
        pipeline,
        pipeline.kafka.triggers_topic,
        lambda r: r["user_id"] == mine and r["trigger"] == "it_cheap_views",
        want=1,
        timeout_s=90,
    )
    assert len(found) == 1, "the count rule forgot the view from before the crash"
    assert found[0]["evidence"]["event_ids"] == [f"{user}-1", f"{user}-2"]
    assert found[0]["time"] == t0 + MINUTE_MS


def test_a_price_drop_of_a_carted_item_fires_for_its_users(pipeline: Settings) -> None:
    """The item operator sees every price of an item: one user's cart, another user's
    view at a lower price, and the first user gets the trigger with the prices."""
    buyer, other = f"pd-{uuid.uuid4().hex[:8]}", f"pd-{uuid.uuid4().hex[:8]}"
    item = f"it-pd-{uuid.uuid4().hex[:6]}"
    t0 = int(time.time() * 1000) - HOUR_MS
    cat = {"category": "rules-it-price", "item_id": item}
    TrafficSender(pipeline, rate=0).send(
        [
            _event(buyer, 1, "add_to_cart", t0, price=100.0, **cat),
            _event(other, 1, "product_view", t0 + MINUTE_MS, price=90.0, **cat),  # -10 %
        ]
    )
    time.sleep(2.0)  # the item operator keys by item: one partition of its input, in order
    TrafficSender(pipeline, rate=0).send(
        [_event(other, 2, "product_view", t0 + 2 * MINUTE_MS, price=75.0, **cat)]  # -25 %
    )
    mine = stored_id(pipeline, buyer)
    found = _price_drops_of(pipeline, item)
    assert [r["user_id"] for r in found] == [mine], found  # not the viewer, once
    drop = found[0]
    assert (drop["kind"], drop["time"]) == ("price_drop", t0 + 2 * MINUTE_MS)
    assert drop["evidence"]["price_added"] == 100.0 and drop["evidence"]["price_now"] == 75.0
    assert drop["evidence"]["event_ids"] == [f"{other}-2"]


def test_a_price_cut_in_the_catalog_fires_without_an_event(
    pipeline: Settings, tmp_path: Path
) -> None:
    """The job reads the catalog's prices too: a cart at 100, then the shop lowers the
    price to 70 with `personalize catalog import` (the catalog topic, where
    Catalog.UpsertItems writes too), and no event of the item follows."""
    buyer = f"pdc-{uuid.uuid4().hex[:8]}"
    item = f"it-pdc-{uuid.uuid4().hex[:6]}"
    t0 = int(time.time() * 1000) - HOUR_MS
    TrafficSender(pipeline, rate=0).send(
        [_event(buyer, 1, "add_to_cart", t0, price=100.0, category="rules-it-price", item_id=item)]
    )
    time.sleep(2.0)  # the cart first: the catalog is another input of the item operator
    cut_at = int(time.time() * 1000)
    feed = tmp_path / "price-cut.jsonl"
    feed.write_text(
        json.dumps(
            {
                "item_id": item,
                "category_path": "Shop > rules-it-price",
                "price": 70.0,
                "updated_at": cut_at,
            }
        )
        + "\n"
    )
    stats = import_catalog(pipeline, feed, CatalogImport.parse())
    assert (stats.sent, stats.errors) == (1, 0), stats
    found = _price_drops_of(pipeline, item)
    assert [r["user_id"] for r in found] == [stored_id(pipeline, buyer)], found
    assert found[0]["time"] == cut_at
    assert (found[0]["evidence"]["price_added"], found[0]["evidence"]["price_now"]) == (100.0, 70.0)


def _price_drops_of(pipeline: Settings, item: str) -> list[dict[str, Any]]:
    """The test rule file's price-drop triggers of ``item``, once one has arrived."""
    return consume_all(
        pipeline,
        pipeline.kafka.triggers_topic,
        lambda r: r["trigger"] == "it_cart_price_drop" and r["evidence"].get("item_id") == item,
        want=1,
        timeout_s=90,
    )
