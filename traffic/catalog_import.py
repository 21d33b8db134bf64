"""``personalize catalog import FILE``: a shop's item file into the ``catalog`` topic.

A file is JSON lines (one record per line, the catalog record's own fields; detected by
a ``.jsonl`` / ``.json`` name or a first line starting with ``{``) or a CSV (any other
file; a header row names the columns, or ``--columns`` for a file without one; the
delimiter is sniffed; gzip and a UTF-8 BOM are fine). ``--map FIELD=COLUMN,...`` says
which column (or JSON key) holds which field; fields not mapped are looked up under
their own name:

    item_id (required), title, category_path (or category), brand, price, tags,
    available, stock, created_at, updated_at, op (upsert, the default, or delete)

``category_path`` may be one cell like ``Shoes > Running`` (split at ``>``, ``/``,
``|``), ``tags`` one cell like ``trail|waterproof`` (``|``, ``;``, ``,``), times epoch
s / ms or ISO 8601 or a ``--time-format`` strptime pattern, ``available`` yes/no,
true/false, 1/0, in_stock/out_of_stock. Every row is validated as the writer validates
(``personalization/catalog_records.py``): a row that fails is not sent, counted by
reason and reported with its first lines (as ``personalize send`` does). Valid records
are produced keyed by item id and acknowledged by Kafka before the command ends.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalization.catalog_records import CatalogItem, validate_catalog_item
from personalization.events import EventRejected
from personalization.settings import Settings
from traffic.replay import BadRows, _open_text, _pairs, _sniff_delimiter, parse_time_ms
from traffic.sender import ProducerLike

__all__ = [
    "FIELDS",
    "CatalogImport",
    "ImportStats",
    "import_catalog",
    "read_catalog",
]

FIELDS = (
    "op",
    "item_id",
    "title",
    "category_path",
    "category",
    "brand",
    "price",
    "tags",
    "available",
    "stock",
    "created_at",
    "updated_at",
)
_TIMES = ("created_at", "updated_at")


@dataclass(frozen=True, slots=True)
class CatalogImport:
    """How a file's columns become catalog records."""

    fields: dict[str, str] = field(default_factory=dict)  # catalog field -> column / key
    columns: tuple[str, ...] = ()  # a headerless CSV's column names
    delimiter: str = ""  # empty = sniffed
    time_format: str = ""  # empty = what the catalog record reads (epoch s/ms, ISO)

    @classmethod
    def parse(
        cls,
        mapping: str | None = None,
        *,
        columns: str | None = None,
        delimiter: str | None = None,
        time_format: str | None = None,
    ) -> CatalogImport:
        fields = _pairs(mapping, "--map") if mapping else {}
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"--map: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
        names = tuple(c.strip() for c in columns.split(",")) if columns else ()
        sep = {"\\t": "\t", "tab": "\t"}.get(delimiter or "", delimiter or "")
        return cls(fields, names, sep, time_format or "")


def _is_jsonl(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return True
    with _open_text(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().lstrip().startswith("{")


def _records(path: Path, spec: CatalogImport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, raw record keyed by the file's own names)."""
    with _open_text(path, encoding="utf-8-sig", errors="replace") as fh:
        if _is_jsonl(path):
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    yield line_no, {"__error__": f"invalid_json: {exc}"}
                    continue
                yield line_no, value if isinstance(value, dict) else {"__error__": "not_object"}
            return
        reader = csv.reader(fh, delimiter=spec.delimiter or _sniff_delimiter(fh))
        header = list(spec.columns) or [h.strip() for h in next(reader, [])]
        absent = sorted({c for c in spec.fields.values() if c not in header})
        if absent:
            raise ValueError(
                f"{path}: mapped column(s) {', '.join(map(repr, absent))} not in the "
                f"{'--columns' if spec.columns else 'header'} {header}"
            )
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            yield reader.line_num, dict(zip(header, (c.strip() for c in row), strict=False))


def _payload(raw: dict[str, Any], spec: CatalogImport) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for name in FIELDS:
        source = spec.fields.get(name, name)
        if source in raw and raw[source] not in (None, ""):
            payload[name] = raw[source]
    if spec.time_format:
        for name in _TIMES:
            if name in payload:
                payload[name] = parse_time_ms(str(payload[name]), spec.time_format)
    return payload


def read_catalog(
    path: str | Path, spec: CatalogImport, bad_rows: BadRows, *, now_ms: int
) -> Iterator[CatalogItem]:
    """The file's valid items; every other row is counted in ``bad_rows``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    for line_no, raw in _records(p, spec):
        if "__error__" in raw:
            reason, _, detail = str(raw["__error__"]).partition(": ")
            bad_rows.add(line_no, reason, detail)
            continue
        try:
            payload = _payload(raw, spec)
            yield validate_catalog_item(payload, now_ms=now_ms)
        except EventRejected as exc:
            bad_rows.add(line_no, exc.rejection.reason, exc.rejection.detail)
        except ValueError as exc:  # a --time-format that does not fit the cell
            bad_rows.add(line_no, "invalid_time", str(exc))


@dataclass
class ImportStats:
    sent: int = 0
    deletes: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)
    errors: int = 0


def import_catalog(
    settings: Settings,
    path: str | Path,
    spec: CatalogImport,
    *,
    producer: ProducerLike | None = None,
    now_ms: int | None = None,
) -> ImportStats:
    """Validate ``path`` and produce its items to the catalog topic; waits for the acks."""
    stats = ImportStats()
    if producer is None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 20,
                "client.id": "pz-catalog-import",
            }
        )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    topic = settings.kafka.catalog_topic
    # One version for the whole file, unless a row carries its own updated_at.
    stamp = now_ms if now_ms is not None else int(time.time() * 1000)
    for item in read_catalog(path, spec, stats.bad_rows, now_ms=stamp):
        while True:
            try:
                producer.produce(
                    topic,
                    key=item.item_id.encode(),
                    value=item.to_json().encode(),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain
        producer.poll(0)
        stats.sent += 1
        stats.deletes += int(item.deleted)
    left = producer.flush(settings.catalog.ack_timeout_s * 6)
    stats.errors = len(failures) + left
    return stats
