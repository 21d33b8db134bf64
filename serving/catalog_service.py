"""The Catalog gRPC servicer: item metadata into the ``catalog`` topic.

Each item of a call is validated by ``personalization/catalog_records.py`` (the rules
the writer applies again to whatever reaches the topic); valid ones are produced to
``kafka.catalog_topic`` keyed by item id, invalid ones to the dead-letter topic with the
reason (source ``grpc-catalog``) and reported per index. The call returns once Kafka
acknowledged every record of it.

Status codes: INVALID_ARGUMENT for an empty call; RESOURCE_EXHAUSTED for more than
``catalog.max_batch_items`` items; UNAVAILABLE when Kafka did not acknowledge in time;
PERMISSION_DENIED without the ``catalog`` scope (``serving/auth.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from personalization.catalog_records import DELETE, UPSERT, CatalogItem, parse_catalog_record
from personalization.events import dead_letter
from personalization.settings import Settings
from personalization.v1 import catalog_pb2, catalog_pb2_grpc
from serving.collector import CollectUnavailable, EventCollector

__all__ = ["DLQ_SOURCE", "CatalogServicer", "delete_payload", "item_payload", "triage_items"]

DLQ_SOURCE = "grpc-catalog"


def item_payload(item: catalog_pb2.CatalogItem) -> dict[str, Any]:
    """A proto item as the catalog record's JSON fields (validated afterwards)."""
    return {
        "op": UPSERT,
        "item_id": item.item_id,
        "title": item.title,
        "category_path": list(item.category_path),
        "brand": item.brand,
        "price": item.price,
        "tags": list(item.tags),
        "available": item.available if item.HasField("available") else None,
        "stock": item.stock if item.HasField("stock") else None,
        "created_at": item.created_ms or None,
        "updated_at": item.updated_ms or None,
    }


def delete_payload(item_id: str, updated_ms: int) -> dict[str, Any]:
    return {"op": DELETE, "item_id": item_id, "updated_at": updated_ms or None}


def triage_items(
    payloads: Sequence[dict[str, Any]], settings: Settings, now_ms: int
) -> tuple[list[tuple[str, str | None, str]], list[catalog_pb2.RejectedItem]]:
    """Records to produce (valid to the catalog topic, invalid to the DLQ) and the
    rejections to report (pure)."""
    kafka = settings.kafka
    skew_ms = settings.features.max_future_skew_s * 1000
    records: list[tuple[str, str | None, str]] = []
    rejected: list[catalog_pb2.RejectedItem] = []
    for index, payload in enumerate(payloads):
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        outcome = parse_catalog_record(raw, now_ms=now_ms, max_future_skew_ms=skew_ms)
        if isinstance(outcome, CatalogItem):
            records.append((kafka.catalog_topic, outcome.item_id, outcome.to_json()))
        else:
            letter = dead_letter(raw, outcome, source=DLQ_SOURCE, now_ms=now_ms)
            records.append((kafka.dlq_topic, None, letter))
            rejected.append(
                catalog_pb2.RejectedItem(
                    index=index, item_id=str(payload.get("item_id", "")), reason=outcome.reason
                )
            )
    return records, rejected


class CatalogServicer(catalog_pb2_grpc.CatalogServicer):
    def __init__(
        self,
        settings: Settings,
        collector: EventCollector,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._settings = settings
        self._collector = collector
        self._max_batch = settings.catalog.max_batch_items
        self._now_ms = clock_ms or (lambda: int(time.time() * 1000))

    def UpsertItems(
        self, request: catalog_pb2.UpsertItemsRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.CatalogWriteResponse:
        self._check_size(len(request.items), context)
        return self._write([item_payload(item) for item in request.items], context)

    def DeleteItems(
        self, request: catalog_pb2.DeleteItemsRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.CatalogWriteResponse:
        self._check_size(len(request.item_ids), context)
        return self._write(
            [delete_payload(item_id, request.updated_ms) for item_id in request.item_ids], context
        )

    def _check_size(self, n: int, context: grpc.ServicerContext) -> None:
        if n == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no items given")
        if n > self._max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{n} items > max batch {self._max_batch}"
            )

    def _write(
        self, payloads: list[dict[str, Any]], context: grpc.ServicerContext
    ) -> catalog_pb2.CatalogWriteResponse:
        records, rejected = triage_items(payloads, self._settings, self._now_ms())
        try:
            self._collector.produce_acked(records)
        except CollectUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return catalog_pb2.CatalogWriteResponse(
            accepted=len(payloads) - len(rejected), rejected=rejected
        )
