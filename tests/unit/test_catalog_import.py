"""``personalize catalog import`` without Kafka: reading CSV / JSON lines through a
mapping, bad rows by reason, and what is produced (a recording producer)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from personalization.catalog_records import CatalogItem, parse_catalog_record
from personalization.settings import Settings
from traffic.catalog_import import CatalogImport, import_catalog, read_catalog
from traffic.replay import BadRows

NOW = 1_760_000_000_000


class RecordingProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, *, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.records.append((topic, key, value))
        on_delivery(None, None)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_a_mapped_csv_with_bad_rows(tmp_path: Path):
    path = tmp_path / "items.csv"
    path.write_text(
        "\ufeffsku,name,cat,maker,eur,labels,in_stock,added\n"
        "a1,Boot,Shoes > Hiking,Acme,129.5,trail|dry,yes,2025-10-01T00:00:00Z\n"
        ",no id,Shoes,Acme,1,,yes,\n"
        "a2,Sock,Shoes/Socks,Zeta,abc,,yes,\n"
        "\n"
        "a3,Hat,Hats,,5,,no,\n"
    )
    spec = CatalogImport.parse(
        "item_id=sku,title=name,category_path=cat,brand=maker,price=eur,tags=labels,"
        "available=in_stock,created_at=added"
    )
    bad = BadRows()
    items = list(read_catalog(path, spec, bad, now_ms=NOW))
    assert [i.item_id for i in items] == ["a1", "a3"]
    assert items[0].category_path == ("Shoes", "Hiking") and items[0].tags == ("trail", "dry")
    assert items[0].created_ms == 1_759_276_800_000 and items[0].updated_ms == NOW
    assert not items[1].available
    assert dict(bad.by_reason) == {"missing_item_id": 1, "invalid_price": 1}
    assert [line for line, _ in bad.examples] == [3, 4]


def test_headerless_gzip_csv_with_a_time_pattern(tmp_path: Path):
    path = tmp_path / "items.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("x9|Lamp|Home>Lights|12|01/10/2025\n")
    spec = CatalogImport.parse(
        "item_id=id,title=t,category_path=c,stock=s,created_at=d",
        columns="id,t,c,s,d",
        delimiter="|",
        time_format="%d/%m/%Y",
    )
    (item,) = read_catalog(path, spec, BadRows(), now_ms=NOW)
    assert item.stock == 12 and item.category_path == ("Home", "Lights")
    assert item.created_ms == 1_759_276_800_000


def test_json_lines_use_their_own_names_and_may_delete(tmp_path: Path):
    path = tmp_path / "items.jsonl"
    path.write_text(
        json.dumps({"item_id": "j1", "title": "A", "tags": ["x", "y"], "stock": 0})
        + "\n{broken\n"
        + json.dumps({"op": "delete", "item_id": "j2", "updated_at": NOW - 5})
        + "\n"
    )
    bad = BadRows()
    items = list(read_catalog(path, CatalogImport.parse(None), bad, now_ms=NOW))
    assert [(i.item_id, i.deleted, i.sellable) for i in items] == [
        ("j1", False, False),
        ("j2", True, False),
    ]
    assert items[1].updated_ms == NOW - 5
    assert dict(bad.by_reason) == {"invalid_json": 1}


def test_mapping_errors_stop_before_anything_is_read(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        CatalogImport.parse("item_id=sku,colour=c")
    path = tmp_path / "items.csv"
    path.write_text("sku,name\na,b\n")
    with pytest.raises(ValueError, match="'title_col' not in the header"):
        list(read_catalog(path, CatalogImport.parse("title=title_col"), BadRows(), now_ms=NOW))


def test_import_produces_valid_items_keyed_by_id(tmp_path: Path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,price\nk1,One,1\nk2,Two,-3\nk3,Three,3\n")
    producer = RecordingProducer()
    settings = Settings()
    stats = import_catalog(settings, path, CatalogImport.parse(None), producer=producer, now_ms=NOW)
    assert (stats.sent, stats.errors, stats.bad_rows.count) == (2, 0, 1)
    assert [(t, k) for t, k, _ in producer.records] == [
        (settings.kafka.catalog_topic, b"k1"),
        (settings.kafka.catalog_topic, b"k3"),
    ]
    first = parse_catalog_record(producer.records[0][2], now_ms=NOW + 1)
    assert isinstance(first, CatalogItem) and first.title == "One" and first.updated_ms == NOW
