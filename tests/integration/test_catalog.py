"""The item catalog on real Kafka and Redis: ``personalize catalog import`` and the
Catalog RPCs produce to the catalog topic, the writer process (``python -m
writer.process``, its catalog consumer) applies records to Feast's Redis store, and an
in-process gRPC server's catalog shows them. Availability, the cold start of new items,
SimilarItems over gRPC and dead letters of invalid records.

The module has a catalog topic, feature-updates topic and consumer group of its own
(unique names), so its writer process shares nothing but Redis with other tests; every
id it writes is unique too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Producer

from feature_repo.names import ITEM_CF, ITEM_STATS, USER_PROFILE
from ops import stack
from ops.infra import kafka_broker as kafka_mod
from ops.infra.processes import free_port
from personalization import feature_store as fs
from personalization.feature_updates import FeatureUpdate
from personalization.online_store import OnlineStoreWriter
from personalization.settings import PROJECT_ROOT, Settings
from personalization.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    events_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
)
from serving.app import ServingApp
from tests.identity import stored_id
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SFX = uuid.uuid4().hex[:8]
NOW_MS = int(time.time() * 1000)
CREATED = NOW_MS - 3_600_000


@pytest.fixture(scope="module")
def catalog_settings(redis_server: Settings, kafka_broker: Settings) -> Settings:
    base = kafka_broker
    settings = base.model_copy(
        update={
            # Topics of the module's own: in particular, its Recommend answers must not
            # reach a session job as impressions (the job would then write its own row of
            # a user these tests wrote straight into Redis, without their interests).
            "kafka": base.kafka.model_copy(
                update={
                    "catalog_topic": f"catalog-{SFX}",
                    "feature_updates_topic": f"fu-{SFX}",
                    "exposures_topic": f"exposures-{SFX}",
                }
            ),
            "catalog": base.catalog.model_copy(update={"consumer_group": f"pz-catalog-{SFX}"}),
            "metrics": base.metrics.model_copy(update={"writer_port": free_port()}),
            "serving": base.serving.model_copy(update={"port": 0, "catalog_refresh_s": 0.2}),
        }
    )
    kafka_mod.ensure_topics(settings)  # the module's own topics, with their configs
    stack.feast_apply(settings)  # keeps `feast apply` honest about the item_catalog view
    return settings


WRITER = stack.Component(f"catalog-writer-{SFX}", "writer.process")


def _writer_log(settings: Settings, lines: int = 30) -> str:
    """The writer process's last log lines (for assertion messages)."""
    path = WRITER.process(settings).logfile
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def writer(catalog_settings: Settings) -> Iterator[Settings]:
    component = WRITER
    stack.start_component(catalog_settings, component)
    try:
        yield catalog_settings
    finally:
        component.process(catalog_settings).stop()


@pytest.fixture(scope="module")
def server(writer: Settings) -> Iterator[ServingApp]:
    app = ServingApp(writer).start()
    try:
        yield app
    finally:
        app.stop(0.5)


@pytest.fixture(scope="module")
def stubs(
    server: ServingApp,
) -> Iterator[tuple[recommender_pb2_grpc.RecommenderStub, catalog_pb2_grpc.CatalogStub]]:
    with grpc.insecure_channel(server.target) as channel:
        yield recommender_pb2_grpc.RecommenderStub(channel), catalog_pb2_grpc.CatalogStub(channel)


def _import(settings: Settings, path: Path, *args: str) -> str:
    """``personalize catalog import`` as a user runs it (a subprocess)."""
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "catalog", "import", str(path), *args],
        cwd=PROJECT_ROOT,
        env={"PZ_SETTINGS_JSON": settings.model_dump_json(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _in_catalog(app: ServingApp, item_id: str, **expected: Any) -> bool:
    row = app.recommender.catalog.snapshot.row(item_id)
    if row is None or row.meta is None:
        return False
    return all(getattr(row.meta, k) == v for k, v in expected.items())


def _snapshot_row(app: ServingApp, item_id: str) -> str:
    return repr(app.recommender.catalog.snapshot.row(item_id))


def _now_ms() -> int:
    # Rows are stamped when written: the catalog refresh reads the item index from its
    # high-water mark, which other tests' live rows keep moving.
    return int(time.time() * 1000)


def _write_user(settings: Settings, user: str, interests: dict[str, float], **row: Any) -> None:
    now = _now_ms()
    features = {
        "interest_categories": list(interests),
        "interest_scores": list(interests.values()),
        "interest_ref_ms": now,
        "last_seen_ms": now,
        "consent": "granted",
        **row,
    }
    OnlineStoreWriter(settings).write(
        [FeatureUpdate(USER_PROFILE, stored_id(settings, user), now * 1000, features)]
    )


def _write_stats(settings: Settings, items: dict[str, tuple[str, float]], **extra: Any) -> None:
    """item_stats rows (as the job's writer writes them, item index included)."""
    now = _now_ms()
    rows = [
        FeatureUpdate(
            ITEM_STATS,
            item_id,
            now * 1000,
            {
                "category": category,
                "price": 10.0,
                "trending_score": trending,
                "trending_ref_ms": now,
                "last_event_ms": now,
                **extra.get(item_id, {}),
            },
        )
        for item_id, (category, trending) in items.items()
    ]
    OnlineStoreWriter(settings).write(rows)


def _recommend(stub: recommender_pb2_grpc.RecommenderStub, user: str, k: int = 10) -> list[Any]:
    return list(
        stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=k), timeout=5).items
    )


def _dead_letters(settings: Settings, wanted: set[str], timeout_s: float = 30.0) -> list[dict]:
    """DLQ records whose raw payload names one of ``wanted`` (item ids)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"dlq-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.dlq_topic])
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and {f["id"] for f in found} != wanted:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            letter = json.loads(msg.value() or b"{}")
            hit = next((w for w in wanted if w in letter["raw"]), None)
            if hit is not None:
                found.append({**letter, "id": hit})
    finally:
        consumer.close()
    return found


def test_a_csv_import_reaches_redis_and_the_serving_catalog(writer: Settings, server: ServingApp):
    path = writer.run_path / f"shop-{SFX}.csv"
    path.write_text(
        "sku;name;cat;maker;eur;labels;in_stock;qty;added\n"
        f"boot-{SFX};Trail boot;Shoes > Hiking;Acme;129.5;trail|waterproof;yes;4;{CREATED}\n"
        f"sock-{SFX};Wool sock;Shoes > Socks;Zeta;9;;no;;\n"
        f";no id;Shoes;Acme;1;;yes;1;\n"
        f"bad-{SFX};bad price;Shoes;Acme;cheap;;yes;1;\n"
    )
    out = _import(
        writer,
        path,
        "--map",
        "item_id=sku,title=name,category_path=cat,brand=maker,price=eur,tags=labels,"
        "available=in_stock,stock=qty,created_at=added",
    )
    assert f"sent 2 items to catalog-{SFX}" in out
    assert "missing_item_id 1" in out and "invalid_price 1" in out
    wait_for(
        lambda: _in_catalog(
            server,
            f"boot-{SFX}",
            title="Trail boot",
            category_path=("Shoes", "Hiking"),
            brand="Acme",
            tags=("trail", "waterproof"),
            stock=4,
            created_ms=CREATED,
        ),
        30,
        "the imported boot in serving's catalog",
    )
    assert wait_for(lambda: _in_catalog(server, f"sock-{SFX}", available=False), 10, "the sock")
    snapshot = server.recommender.catalog.snapshot
    # No event named them: their category is the catalog's leaf; the sock is not for sale.
    assert snapshot.row_category(f"boot-{SFX}") == "Hiking"
    assert snapshot.index_of[f"sock-{SFX}"] in snapshot.unavailable_positions().tolist()
    # Feast reads the same row from Redis (the item_catalog view).
    store = fs.feature_store(writer)
    online = store.get_online_features(
        features=["item_catalog:title", "item_catalog:list_price", "item_catalog:available"],
        entity_rows=[{"item_id": f"boot-{SFX}"}, {"item_id": f"sock-{SFX}"}],
    ).to_dict()
    assert online["title"] == ["Trail boot", "Wool sock"]
    assert online["list_price"] == [129.5, 9.0] and online["available"] == [1, 0]


def test_unavailable_items_are_never_recommended(writer: Settings, server: ServingApp, stubs):
    recommender, catalog = stubs
    lamps = f"lamps-{SFX}"
    ids = [f"lamp-{SFX}-{i}" for i in range(4)]
    user = f"lamp-fan-{SFX}"
    _write_stats(writer, {item: (lamps, 100.0 - i) for i, item in enumerate(ids)})
    _write_user(writer, user, {lamps: 5.0})
    reply = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(
            items=[
                catalog_pb2.CatalogItem(item_id=ids[0], title="sold out", stock=0),
                catalog_pb2.CatalogItem(item_id=ids[1], title="withdrawn", available=False),
                catalog_pb2.CatalogItem(item_id=ids[2], title="for sale", stock=3),
            ]
        ),
        timeout=10,
    )
    assert reply.accepted == 3 and not reply.rejected
    wait_for(lambda: _in_catalog(server, ids[2], stock=3), 30, "the lamps' records")
    listed = [item.item_id for item in _recommend(recommender, user)]
    assert ids[2] in listed and ids[3] in listed  # catalogued and not, both for sale
    assert ids[0] not in listed and ids[1] not in listed
    # Back in stock: recommended again; deleted: never again.
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id=ids[0], stock=7)]),
        timeout=10,
    )
    catalog.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=[ids[2]]), timeout=10)
    wait_for(lambda: _in_catalog(server, ids[2], deleted=True), 30, "the deletion")
    wait_for(lambda: _in_catalog(server, ids[0], stock=7), 30, "the restock")
    answer = _recommend(recommender, user)
    listed = [item.item_id for item in answer]
    # On failure: each item with its reason, and what serving holds of the restocked lamp.
    seen = ([" ".join(str(item).split()) for item in answer], _snapshot_row(server, ids[0]))
    assert ids[0] in listed and ids[2] not in listed and ids[1] not in listed, seen


def test_a_new_item_without_events_is_recommended_as_new(
    writer: Settings, server: ServingApp, stubs
):
    recommender, catalog = stubs
    tents, user = f"tents-{SFX}", f"camper-{SFX}"
    old = {f"tent-{SFX}-{i}": (tents, 50.0 - i) for i in range(6)}
    _write_stats(writer, old)
    _write_user(writer, user, {tents: 3.0, f"nothing-{SFX}": 1.0})
    new_id = f"tent-new-{SFX}"
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(
            items=[
                catalog_pb2.CatalogItem(
                    item_id=new_id,
                    title="Ultralight tent",
                    category_path=[f"outdoor-{SFX}", tents],
                    brand="Acme",
                    created_ms=NOW_MS - 3_600_000,
                ),
                # New too, but nothing about this user points at it.
                catalog_pb2.CatalogItem(
                    item_id=f"kettle-new-{SFX}",
                    category_path=[f"kitchen-{SFX}"],
                    created_ms=NOW_MS - 3_600_000,
                ),
            ]
        ),
        timeout=10,
    )
    wait_for(lambda: _in_catalog(server, new_id), 30, "the new tent")
    items = {item.item_id: item for item in _recommend(recommender, user, k=6)}
    assert new_id in items, sorted(items)
    assert items[new_id].reason == f"new in {tents}" and items[new_id].source == "new_item"
    assert f"kettle-new-{SFX}" not in items
    # Once events reach it, it is no longer new: ranked like any other tent.
    _write_stats(writer, {new_id: (tents, 1.0)})
    wait_for(
        lambda: server.recommender.catalog.snapshot.row(new_id).last_event_ms > 0,  # type: ignore[union-attr]
        30,
        "the tent's first stats",
    )
    again = {item.item_id: item for item in _recommend(recommender, user, k=10)}
    assert again.get(new_id) is None or again[new_id].source != "new_item"


def test_similar_items_over_grpc(writer: Settings, server: ServingApp, stubs):
    recommender, catalog = stubs
    cat = f"bikes-{SFX}"
    anchor, bought_with, same_brand, other, sold_out, bought = (
        f"bike-{SFX}-{n}" for n in ("anchor", "helmet", "acme2", "zeta", "gone", "bought")
    )
    items = {i: (cat, 10.0) for i in (anchor, bought_with, same_brand, other, sold_out, bought)}
    # Popular among visitors from "QQ" (a country no other test uses): the anchor's
    # brand twin and the CF neighbour, and enough weight for the context to count.
    local = {"context_keys": ["c=QQ"], "context_scores": [4.0]}
    _write_stats(
        writer,
        items,
        **{
            anchor: {"covisit_items": [bought_with, sold_out], "covisit_scores": [5.0, 9.0]},
            same_brand: local,
            other: local,
            bought: local,
        },
    )
    OnlineStoreWriter(writer).write(
        [
            FeatureUpdate(ITEM_CF, anchor, _now_ms() * 1000, {"cf_vector": [1.0, 0.0]}),
            FeatureUpdate(ITEM_CF, other, _now_ms() * 1000, {"cf_vector": [0.9, 0.1]}),
        ]
    )
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(
            items=[
                catalog_pb2.CatalogItem(item_id=anchor, category_path=[cat], brand="Acme"),
                catalog_pb2.CatalogItem(item_id=same_brand, category_path=[cat], brand="Acme"),
                catalog_pb2.CatalogItem(item_id=bought, category_path=[cat], brand="Acme"),
                catalog_pb2.CatalogItem(item_id=other, category_path=[cat], brand="Zeta"),
                catalog_pb2.CatalogItem(item_id=sold_out, category_path=[cat], stock=0),
            ]
        ),
        timeout=10,
    )
    wait_for(lambda: _in_catalog(server, sold_out, stock=0), 30, "the bikes' records")
    wait_for(lambda: server.recommender.catalog.snapshot.covisitation, 30, "co-visitation")
    user = f"rider-{SFX}"
    _write_user(writer, user, {cat: 1.0}, purchased_items=[bought])
    reply = recommender.SimilarItems(
        recommender_pb2.SimilarItemsRequest(item_id=anchor, k=10, user_id=user), timeout=5
    )
    got = {item.item_id: item for item in reply.items}
    assert reply.item_id == anchor
    assert anchor not in got and sold_out not in got and bought not in got
    assert (
        got[bought_with].reason == "often viewed together" and reply.items[0].item_id == bought_with
    )
    assert got[same_brand].reason == "same brand"
    assert got[other].reason == "similar"
    scores = [item.score for item in reply.items]
    assert scores == sorted(scores, reverse=True)
    # Without the user, what they bought is similar again.
    anonymous = recommender.SimilarItems(
        recommender_pb2.SimilarItemsRequest(item_id=anchor, k=10), timeout=5
    )
    assert bought in {item.item_id for item in anonymous.items}
    # A visitor from QQ: what is popular there says so (and similarity still decides).
    visitor = recommender.SimilarItems(
        recommender_pb2.SimilarItemsRequest(
            item_id=anchor, k=10, context=events_pb2.EventContext(country="qq")
        ),
        timeout=5,
    )
    reasons = {item.item_id: item.reason for item in visitor.items}
    assert reasons[same_brand] == "same brand, popular in QQ", reasons
    assert reasons[other] == "similar, popular in QQ"
    assert reasons[bought_with] == "often viewed together"
    for request, code in (
        (recommender_pb2.SimilarItemsRequest(item_id=f"nope-{SFX}"), grpc.StatusCode.NOT_FOUND),
        (
            recommender_pb2.SimilarItemsRequest(item_id=anchor, k=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            recommender_pb2.SimilarItemsRequest(item_id=anchor, k=10_000),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (recommender_pb2.SimilarItemsRequest(item_id=" "), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            recommender.SimilarItems(request, timeout=5)
        assert err.value.code() == code


def test_invalid_catalog_records_are_dead_lettered_with_the_reason(writer: Settings, stubs):
    _, catalog = stubs
    producer = Producer({"bootstrap.servers": writer.kafka.bootstrap_servers})
    raw = {
        f"neg-{SFX}": json.dumps({"item_id": f"neg-{SFX}", "stock": -2}),
        f"typo-{SFX}": json.dumps({"item_id": f"typo-{SFX}", "colour": "red"}),
        f"json-{SFX}": f'{{"item_id": "json-{SFX}", ',
    }
    failed: list[object] = []
    for key, value in raw.items():
        # Keyed: the topic is compacted, and Kafka refuses a record without a key there.
        producer.produce(
            writer.kafka.catalog_topic,
            key=key.encode(),
            value=value.encode(),
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
    assert producer.flush(10) == 0 and not failed
    reply = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(
            items=[
                catalog_pb2.CatalogItem(item_id=f"ok-{SFX}"),
                catalog_pb2.CatalogItem(item_id=f"rpc-{SFX}", price=-1),
            ]
        ),
        timeout=10,
    )
    assert reply.accepted == 1
    assert [(r.index, r.item_id, r.reason) for r in reply.rejected] == [
        (1, f"rpc-{SFX}", "invalid_price")
    ]
    letters = {f["id"]: f for f in _dead_letters(writer, {*raw, f"rpc-{SFX}"})}
    assert WRITER.process(writer).is_running(), _writer_log(writer)
    assert {i: (f["reason"], f["source"]) for i, f in letters.items()} == {
        f"neg-{SFX}": ("invalid_stock", "catalog"),
        f"typo-{SFX}": ("unknown_field", "catalog"),
        f"json-{SFX}": ("invalid_json", "catalog"),
        f"rpc-{SFX}": ("invalid_price", "grpc-catalog"),
    }, _writer_log(writer)
    assert letters[f"neg-{SFX}"]["raw"] == raw[f"neg-{SFX}"]  # the untouched payload
