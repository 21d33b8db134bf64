"""The catalog record: item metadata on the ``catalog`` topic, validated (pure).

One JSON object per line, keyed by item id, produced by ``personalize catalog import``
and ``Catalog.UpsertItems`` / ``DeleteItems`` and applied by the writer's catalog
consumer (``writer/catalog.py``)::

    {"op": "upsert", "item_id": "sku-1", "title": "Trail runner", "brand": "Acme",
     "category_path": ["shoes", "running"], "price": 89.9, "tags": ["trail", "waterproof"],
     "available": true, "stock": 12, "created_at": "2026-12-01T09:00:00Z",
     "updated_at": 1764579600000}
    {"op": "delete", "item_id": "sku-1", "updated_at": 1764583200000}

``category_path`` may be a list or one string split at ``>``, ``/`` or ``|``; ``tags`` a
list or one string split at ``|``, ``;`` or ``,``; times are epoch s / ms or ISO 8601
(as event times). ``stock`` absent or empty means "not tracked" (-1). ``updated_at`` is the
record's version: the online store keeps the newest per item (absent: the time it was
produced), so a replayed older record changes nothing and a delete is a tombstone that
an older upsert cannot undo. Every rule refuses with a stable reason code
(:class:`personalization.events.Rejection`), and a refused record goes to the dead-letter
topic like an event.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from personalization.events import EventRejected, Rejection, parse_event_time_ms

__all__ = [
    "DELETE",
    "MAX_CATEGORY_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_TAGS",
    "UPSERT",
    "CatalogItem",
    "item_from_features",
    "parse_catalog_record",
    "validate_catalog_item",
]

UPSERT = "upsert"
DELETE = "delete"
MAX_RECORD_BYTES = 16 * 1024
MAX_ID_LENGTH = 128
MAX_TITLE_LENGTH = 512
MAX_NAME_LENGTH = 128  # a category level, a brand, a tag
MAX_CATEGORY_DEPTH = 8
MAX_TAGS = 32
MAX_PRICE = 1e9
MAX_STOCK = 2**40

_PATH_SPLIT = re.compile(r"\s*(?:>|/|\|)\s*")
_TAG_SPLIT = re.compile(r"\s*[|;,]\s*")
_FIELDS = frozenset(
    {
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
    }
)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    title: str = ""
    category_path: tuple[str, ...] = ()
    brand: str = ""
    price: float = 0.0
    tags: tuple[str, ...] = ()
    available: bool = True
    stock: int = -1  # -1 = not tracked
    created_ms: int = 0  # 0 = unknown
    updated_ms: int = 0
    deleted: bool = False

    @property
    def category(self) -> str:
        """The most specific level of the path ("" without one)."""
        return self.category_path[-1] if self.category_path else ""

    @property
    def sellable(self) -> bool:
        """May be recommended: not deleted, available, and not out of stock."""
        return not self.deleted and self.available and self.stock != 0

    def to_json(self) -> str:
        """The wire record (what :func:`parse_catalog_record` reads back)."""
        if self.deleted:
            record: dict[str, Any] = {
                "op": DELETE,
                "item_id": self.item_id,
                "updated_at": self.updated_ms,
            }
        else:
            record = {
                "op": UPSERT,
                "item_id": self.item_id,
                "title": self.title,
                "category_path": list(self.category_path),
                "brand": self.brand,
                "price": self.price,
                "tags": list(self.tags),
                "available": self.available,
                "stock": None if self.stock < 0 else self.stock,
                "created_at": self.created_ms or None,
                "updated_at": self.updated_ms or None,
            }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    def feature_row(self) -> dict[str, Any]:
        """The ``item_catalog`` view's row (``feature_repo/features.py``)."""
        return {
            "title": self.title,
            "category_path": list(self.category_path),
            "brand": self.brand,
            "list_price": self.price,
            "tags": list(self.tags),
            "available": int(self.available and not self.deleted),
            "stock": self.stock,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "deleted": int(self.deleted),
        }


def item_from_features(item_id: str, values: Mapping[str, Any]) -> CatalogItem | None:
    """A stored ``item_catalog`` row back as an item; None when the item has none."""
    if not values:
        return None

    def num(name: str, default: int) -> int:
        value = values.get(name)
        return int(value) if isinstance(value, int | float) else default

    price = values.get("list_price")
    return CatalogItem(
        item_id=item_id,
        title=str(values.get("title") or ""),
        category_path=tuple(str(c) for c in values.get("category_path") or ()),
        brand=str(values.get("brand") or ""),
        price=float(price) if isinstance(price, int | float) else 0.0,
        tags=tuple(str(t) for t in values.get("tags") or ()),
        available=bool(num("available", 1)),
        stock=num("stock", -1),
        created_ms=num("created_ms", 0),
        updated_ms=num("updated_ms", 0),
        deleted=bool(num("deleted", 0)),
    )


def _name(raw: Any, field: str, limit: int = MAX_NAME_LENGTH) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise EventRejected(f"invalid_{field}", f"{field} must be a string")
    text = " ".join(str(raw).split())  # one line, single spaces
    if len(text) > limit:
        raise EventRejected(f"invalid_{field}", f"{field} is longer than {limit}")
    return text


def _item_id(raw: Any) -> str:
    if raw is None or raw == "":
        raise EventRejected("missing_item_id", "item_id is required")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise EventRejected("invalid_item_id", "item_id must be a string")
    text = str(raw).strip()
    if not text:
        raise EventRejected("missing_item_id", "item_id is blank")
    if len(text) > MAX_ID_LENGTH:
        raise EventRejected("invalid_item_id", f"item_id is longer than {MAX_ID_LENGTH}")
    return text


def _names(raw: Any, field: str, split: re.Pattern[str], limit: int) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        parts: list[Any] = split.split(raw)
    elif isinstance(raw, list | tuple):
        parts = list(raw)
    else:
        raise EventRejected(f"invalid_{field}", f"{field} must be a list or a string")
    names = [_name(p, field) for p in parts]
    names = [n for n in names if n]
    if len(names) > limit:
        raise EventRejected(f"invalid_{field}", f"{field} has more than {limit} entries")
    return tuple(dict.fromkeys(names))  # first occurrence wins, order kept


def _price(raw: Any) -> float:
    if raw is None or raw == "":
        return 0.0
    if isinstance(raw, bool):
        raise EventRejected("invalid_price", "price must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise EventRejected("invalid_price", f"price {str(raw)[:32]!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_PRICE:
        raise EventRejected("invalid_price", f"price {value!r} is out of range")
    return value


def _stock(raw: Any) -> int:
    if raw is None or raw == "":
        return -1
    if isinstance(raw, bool):
        raise EventRejected("invalid_stock", "stock must be a whole number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise EventRejected("invalid_stock", f"stock {str(raw)[:32]!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_STOCK:
        raise EventRejected("invalid_stock", f"stock {raw!r} is not a count >= 0")
    return int(value)


_TRUE = {"true", "1", "yes", "y", "t", "in_stock", "available"}
_FALSE = {"false", "0", "no", "n", "f", "out_of_stock", "unavailable", "discontinued"}


def _available(raw: Any) -> bool:
    if raw is None or raw == "":
        return True
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower().replace(" ", "_")
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise EventRejected("invalid_available", f"available {str(raw)[:32]!r} is not a yes/no")


def _time(raw: Any, field: str, now_ms: int, max_future_skew_ms: int) -> int:
    if raw is None or raw == "":
        return 0
    try:
        value = parse_event_time_ms(raw)
    except EventRejected as exc:
        raise EventRejected(f"invalid_{field}", exc.rejection.detail) from None
    if value > now_ms + max_future_skew_ms:
        raise EventRejected(f"invalid_{field}", f"{field} is in the future")
    return value


def validate_catalog_item(
    payload: Mapping[str, Any], *, now_ms: int, max_future_skew_ms: int = 24 * 3600 * 1000
) -> CatalogItem:
    """One record as a normalised item; raises ``EventRejected`` with a reason code.

    A record without ``updated_at`` is versioned ``now_ms`` (the time it was read).
    """
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise EventRejected("unknown_field", f"unknown field {unknown[0][:64]!r}")
    op = payload.get("op") or UPSERT
    if op not in (UPSERT, DELETE):
        raise EventRejected("unknown_op", f"op must be {UPSERT!r} or {DELETE!r}")
    item_id = _item_id(payload.get("item_id"))
    updated_ms = _time(payload.get("updated_at"), "updated_at", now_ms, max_future_skew_ms)
    updated_ms = updated_ms or now_ms
    if op == DELETE:
        return CatalogItem(item_id, available=False, updated_ms=updated_ms, deleted=True)
    path_raw = payload.get("category_path")
    if path_raw is None or path_raw == "":
        path_raw = payload.get("category")
    return CatalogItem(
        item_id=item_id,
        title=_name(payload.get("title"), "title", MAX_TITLE_LENGTH),
        category_path=_names(path_raw, "category_path", _PATH_SPLIT, MAX_CATEGORY_DEPTH),
        brand=_name(payload.get("brand"), "brand"),
        price=_price(payload.get("price")),
        tags=_names(payload.get("tags"), "tags", _TAG_SPLIT, MAX_TAGS),
        available=_available(payload.get("available")),
        stock=_stock(payload.get("stock")),
        created_ms=_time(payload.get("created_at"), "created_at", now_ms, max_future_skew_ms),
        updated_ms=updated_ms,
    )


def parse_catalog_record(
    raw: bytes | str, *, now_ms: int, max_future_skew_ms: int = 24 * 3600 * 1000
) -> CatalogItem | Rejection:
    """A catalog topic record as an item, or why it is refused."""
    if len(raw) > MAX_RECORD_BYTES:
        return Rejection("record_too_large", f"{len(raw)} bytes > {MAX_RECORD_BYTES}")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejection("invalid_json", str(exc)[:200])
    if not isinstance(payload, dict):
        return Rejection("invalid_record", "a catalog record is a JSON object")
    try:
        return validate_catalog_item(payload, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    except EventRejected as exc:
        return exc.rejection
    except (TypeError, ValueError, OverflowError) as exc:
        # Defensive: a shape no rule above foresaw is still a rejection, not a crash.
        return Rejection("invalid_record", f"{type(exc).__name__}: {str(exc)[:200]}")
