"""Protobuf ``Event`` <-> the JSON wire dict of ``personalization/events.py`` (pure).

Proto3 has no "unset" for scalars, so zero values mean "absent": an empty string, a
price of 0, a quantity of 0 (= the default 1) and an ``event_time_ms`` of 0 are left out
of the wire dict, and validation then treats them exactly as a JSON tracker's missing
fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from personalization.events import CONTEXT_FIELDS, parse_event_time_ms
from personalization.v1 import events_pb2


def event_to_wire(event: events_pb2.Event) -> dict[str, Any]:
    """The JSON wire form of a proto event, as ``personalization.events`` reads it."""
    out: dict[str, Any] = {}
    for name in ("event_id", "user_id", "event_type", "item_id", "category"):
        value = getattr(event, name)
        if value:
            out[name] = value
    if event.price:
        out["price"] = event.price
    if event.quantity:
        out["quantity"] = event.quantity
    if event.event_time_ms:
        out["event_time"] = event.event_time_ms
    if event.HasField("context"):
        context = {name: getattr(event.context, name) for name in CONTEXT_FIELDS}
        context = {name: value for name, value in context.items() if value}
        if context:
            out["context"] = context
    if event.properties:
        out["properties"] = dict(event.properties)
    return out


def wire_to_event(payload: Mapping[str, Any]) -> events_pb2.Event:
    """A proto event from a wire dict; raises ValueError for values a proto cannot hold.

    Only representation is checked here (e.g. a price that is not a number); the
    server validates the content and reports rejections per event.
    """
    event = events_pb2.Event()
    for name in ("event_id", "user_id", "event_type", "item_id", "category"):
        value = payload.get(name)
        if value is not None:
            setattr(event, name, str(value))
    if payload.get("price") not in (None, ""):
        event.price = float(payload["price"])
    if payload.get("quantity") not in (None, ""):
        event.quantity = int(payload["quantity"])
    raw_time = payload.get("event_time", payload.get("event_time_ms"))
    if raw_time is not None:
        event.event_time_ms = parse_event_time_ms(raw_time)
    context = payload.get("context")
    if context:
        if not isinstance(context, Mapping):
            raise ValueError("context must be an object")
        for name in CONTEXT_FIELDS:
            if context.get(name) is not None:
                setattr(event.context, name, str(context[name]))
    properties = payload.get("properties")
    if properties:
        if not isinstance(properties, Mapping):
            raise ValueError("properties must be an object")
        for key, value in properties.items():
            event.properties[str(key)] = str(value)
    return event
