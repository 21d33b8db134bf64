"""The behaviour event: schema, validation and normalization (pure functions).

Both the gRPC collector and the Flink job use this module, so an event accepted at
the front door is accepted by the job and vice versa. Events travel on Kafka as JSON
objects with the field names of ``protos/personalization/v1/events.proto``:

    {"event_id": "e-1", "user_id": "u-7", "event_type": "product_view",
     "item_id": "sku-9", "category": "shoes", "price": 59.9, "quantity": 1,
     "event_time": 1700000000000,            # ms, s, or an ISO-8601 string
     "context": {"device": "mobile", "country": "DE", "referrer": "...",
                 "session_id": "...", "page": "/p/sku-9"},
     "properties": {"age_band": "25-34"}}

Normalization: event type aliases (``pv``, ``buy``, ``cart`` ...) map to one
canonical name, times become integer milliseconds, country upper case, device lower
case, a missing ``event_id`` becomes a content hash (so a redelivered copy of the
same payload still dedupes), a missing quantity becomes 1.
Every rejection carries a machine-readable reason code and a human-readable detail.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from personalization.compact_pickle import compact_pickle

if TYPE_CHECKING:
    from personalization.settings import FeatureSettings

# Canonical event types and the topic family each belongs to.
PAGE_VIEW = "page_view"
PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
REMOVE_FROM_CART = "remove_from_cart"
PURCHASE = "purchase"
FAVORITE = "favorite"
RATING = "rating"
# properties.rating: the value of a rating event (a finite number, e.g. 1..5 stars).
RATING_PROPERTY = "rating"
CLICK = "click"
SEARCH = "search"
DWELL = "dwell"

CLICKSTREAM_TYPES = frozenset(
    {PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, REMOVE_FROM_CART, CLICK, SEARCH}
)
PURCHASE_TYPES = frozenset({PURCHASE})
ENGAGEMENT_TYPES = frozenset({FAVORITE, RATING, DWELL})
EVENT_TYPES = CLICKSTREAM_TYPES | PURCHASE_TYPES | ENGAGEMENT_TYPES
# Control events travel with the user's clickstream (same topic, same key, so they are
# ordered with the behaviour they govern): consent changes and erasure requests.
CONSENT = "consent"
ERASURE = "erasure"
CONTROL_TYPES = frozenset({CONSENT, ERASURE})
CONSENT_PROPERTY = "personalization"
CONSENT_VALUES = frozenset({"granted", "denied"})
ACCEPTED_TYPES = EVENT_TYPES | CONTROL_TYPES
# Types that are about one item and so must name it.
ITEM_EVENT_TYPES = frozenset(
    {PRODUCT_VIEW, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE, FAVORITE, RATING, CLICK}
)

_ALIASES = {
    "pv": PRODUCT_VIEW,
    "view": PRODUCT_VIEW,
    "item_view": PRODUCT_VIEW,
    "product_detail": PRODUCT_VIEW,
    "detail": PRODUCT_VIEW,
    "pageview": PAGE_VIEW,
    "page": PAGE_VIEW,
    "cart": ADD_TO_CART,
    "addtocart": ADD_TO_CART,
    "add-to-cart": ADD_TO_CART,
    "remove-from-cart": REMOVE_FROM_CART,
    "removefromcart": REMOVE_FROM_CART,
    "buy": PURCHASE,
    "order": PURCHASE,
    "transaction": PURCHASE,
    "checkout_complete": PURCHASE,
    "fav": FAVORITE,
    "like": FAVORITE,
    "wishlist": FAVORITE,
    "rate": RATING,
}

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 2048
MAX_PROPERTIES = 64
CONTEXT_FIELDS = ("device", "country", "referrer", "session_id", "page")


@compact_pickle
@dataclass(frozen=True, slots=True)
class Event:
    """A validated, normalized event."""

    event_id: str
    user_id: str
    event_type: str
    event_time_ms: int
    item_id: str = ""
    category: str = ""
    price: float = 0.0
    quantity: int = 1
    device: str = ""
    country: str = ""
    referrer: str = ""
    session_id: str = ""
    page: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form (as accepted by :func:`parse_event`)."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "event_type": self.event_type,
            "event_time": self.event_time_ms,
        }
        if self.item_id:
            out["item_id"] = self.item_id
        if self.category:
            out["category"] = self.category
        if self.price:
            out["price"] = self.price
        if self.quantity != 1:
            out["quantity"] = self.quantity
        context = {name: getattr(self, name) for name in CONTEXT_FIELDS if getattr(self, name)}
        if context:
            out["context"] = context
        if self.properties:
            out["properties"] = dict(self.properties)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused. ``reason`` is a stable code for metrics and alerts."""

    reason: str
    detail: str


class EventRejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.rejection = Rejection(reason, detail)


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_event_bytes: int = 64 * 1024
    max_future_skew_ms: int = 24 * 3600 * 1000
    max_event_age_ms: int = 100 * 365 * 24 * 3600 * 1000

    @staticmethod
    def from_settings(cfg: FeatureSettings) -> ValidationLimits:
        return ValidationLimits(
            max_event_bytes=cfg.max_event_bytes,
            max_future_skew_ms=cfg.max_future_skew_s * 1000,
            max_event_age_ms=cfg.max_event_age_s * 1000,
        )


def topic_family(event_type: str) -> str:
    """'clickstream', 'purchase' or 'engagement': which input topic carries this type."""
    if event_type in PURCHASE_TYPES:
        return "purchase"
    if event_type in ENGAGEMENT_TYPES:
        return "engagement"
    return "clickstream"


def normalize_event_type(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise EventRejected("missing_event_type", "event_type must be a non-empty string")
    name = raw.strip().lower().replace(" ", "_")
    name = _ALIASES.get(name, name)
    if name not in ACCEPTED_TYPES:
        raise EventRejected("unknown_event_type", f"unknown event_type {raw[:64]!r}")
    return name


def parse_event_time_ms(raw: Any) -> int:
    """Milliseconds since the epoch from ms, s (numbers below 1e11) or ISO-8601."""
    if isinstance(raw, bool) or raw is None:
        raise EventRejected("invalid_event_time", "event_time is required")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or raw <= 0:
            raise EventRejected("invalid_event_time", f"event_time {raw!r} is not a time")
        # Seconds until the year 5138; anything larger is already milliseconds.
        return int(raw * 1000) if raw < 1e11 else int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return parse_event_time_ms(float(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise EventRejected(
                "invalid_event_time", f"event_time {text[:64]!r} is not ISO-8601 or epoch"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise EventRejected("invalid_event_time", f"event_time has type {type(raw).__name__}")


def _identifier(raw: Any, name: str, *, required: bool) -> str:
    if raw is None or raw == "":
        if required:
            raise EventRejected(f"missing_{name}", f"{name} is required")
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise EventRejected(f"invalid_{name}", f"{name} must be a string")
    text = str(raw).strip()
    if not text:
        if required:
            raise EventRejected(f"missing_{name}", f"{name} is blank")
        return ""
    if len(text) > MAX_ID_LENGTH:
        raise EventRejected(f"invalid_{name}", f"{name} is longer than {MAX_ID_LENGTH}")
    return text


def _text(raw: Any, name: str) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise EventRejected(f"invalid_{name}", f"{name} must be a string")
    text = str(raw).strip()
    if len(text) > MAX_TEXT_LENGTH:
        raise EventRejected(f"invalid_{name}", f"{name} is longer than {MAX_TEXT_LENGTH}")
    return text


def _price(raw: Any) -> float:
    if raw is None or raw == "":
        return 0.0
    if isinstance(raw, bool):
        raise EventRejected("invalid_price", "price must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise EventRejected("invalid_price", f"price {str(raw)[:32]!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > 1e9:
        raise EventRejected("invalid_price", f"price {value!r} is out of range")
    return value


def _quantity(raw: Any) -> int:
    if raw is None or raw == "":
        return 1
    if isinstance(raw, bool):
        raise EventRejected("invalid_quantity", "quantity must be an integer")
    try:
        as_float = float(raw)
    except (TypeError, ValueError):
        raise EventRejected("invalid_quantity", "quantity must be an integer") from None
    if not math.isfinite(as_float) or as_float != int(as_float) or not 1 <= as_float <= 1e6:
        raise EventRejected("invalid_quantity", f"quantity {raw!r} must be 1..1000000")
    return int(as_float)


def _context(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EventRejected("invalid_context", "context must be an object")
    ctx = {name: _text(raw.get(name), f"context_{name}") for name in CONTEXT_FIELDS}
    ctx["device"] = ctx["device"].lower()
    ctx["country"] = ctx["country"].upper()
    return ctx


def _properties(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EventRejected("invalid_properties", "properties must be an object")
    if len(raw) > MAX_PROPERTIES:
        raise EventRejected("invalid_properties", f"more than {MAX_PROPERTIES} properties")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > MAX_ID_LENGTH:
            raise EventRejected("invalid_properties", "property names must be short strings")
        if isinstance(value, dict | list):
            raise EventRejected("invalid_properties", f"property {key[:64]!r} is not a scalar")
        out[key] = _text(value, "properties")
    return out


def content_event_id(payload: dict[str, Any]) -> str:
    """A stable id for an event that came without one: a hash of its content."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "h-" + hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:24]


def validate_event(
    payload: Any, *, now_ms: int, limits: ValidationLimits = ValidationLimits()
) -> Event:
    """Validate and normalize a decoded JSON value; raise :class:`EventRejected`."""
    if not isinstance(payload, dict):
        raise EventRejected("not_an_object", "an event must be a JSON object")
    event_type = normalize_event_type(payload.get("event_type"))
    user_id = _identifier(payload.get("user_id"), "user_id", required=True)
    item_id = _identifier(
        payload.get("item_id"), "item_id", required=event_type in ITEM_EVENT_TYPES
    )
    event_time_ms = parse_event_time_ms(payload.get("event_time", payload.get("event_time_ms")))
    if event_time_ms > now_ms + limits.max_future_skew_ms:
        raise EventRejected("event_time_in_future", f"event_time {event_time_ms} is ahead of now")
    if event_time_ms < now_ms - limits.max_event_age_ms:
        raise EventRejected("event_time_too_old", f"event_time {event_time_ms} is too old")
    event_id = _identifier(payload.get("event_id"), "event_id", required=False)
    if not event_id:
        event_id = content_event_id(payload)
    context = _context(payload.get("context"))
    properties = _properties(payload.get("properties"))
    rating = properties.get(RATING_PROPERTY)
    if rating is not None and not _is_finite_number(rating):
        # The job learns from ratings; a value it cannot read would stop it, not just it.
        raise EventRejected("invalid_rating", f"properties.{RATING_PROPERTY} must be a number")
    if event_type == CONSENT and properties.get(CONSENT_PROPERTY) not in CONSENT_VALUES:
        raise EventRejected(
            "invalid_consent",
            f"consent events need properties.{CONSENT_PROPERTY} = granted | denied",
        )
    return Event(
        event_id=event_id,
        user_id=user_id,
        event_type=event_type,
        event_time_ms=event_time_ms,
        item_id=item_id,
        category=_text(payload.get("category"), "category").lower(),
        price=_price(payload.get("price")),
        quantity=_quantity(payload.get("quantity")),
        properties=properties,
        **context,
    )


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def parse_event(
    raw: bytes | str, *, now_ms: int, limits: ValidationLimits = ValidationLimits()
) -> Event | Rejection:
    """Parse one raw Kafka value. Never raises: returns the event or why it was refused."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "replace"))
    if size > limits.max_event_bytes:
        return Rejection("payload_too_large", f"{size} bytes > {limits.max_event_bytes}")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return Rejection("invalid_json", str(exc)[:200])
    try:
        return validate_event(payload, now_ms=now_ms, limits=limits)
    except EventRejected as exc:
        return exc.rejection
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # Defensive: a shape no rule above foresaw is still a rejection, not a crash.
        return Rejection("invalid_event", f"{type(exc).__name__}: {str(exc)[:200]}")


def dead_letter(raw: bytes | str, rejection: Rejection, *, source: str, now_ms: int) -> str:
    """The DLQ record: the untouched raw payload plus why and where it was refused."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return json.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "source": source,
            "rejected_at_ms": now_ms,
            "raw": text,
        },
        separators=(",", ":"),
    )
