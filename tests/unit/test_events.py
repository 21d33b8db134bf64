"""Validation and normalization of behaviour events (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalization.events import (
    ADD_TO_CART,
    PRODUCT_VIEW,
    PURCHASE,
    Event,
    Rejection,
    ValidationLimits,
    content_event_id,
    dead_letter,
    parse_event,
    topic_family,
)

NOW = 1_700_000_000_000


def ok(payload: dict) -> Event:
    parsed = parse_event(json.dumps(payload), now_ms=NOW)
    assert isinstance(parsed, Event), parsed
    return parsed


def rejected(raw: str | bytes, **kw) -> Rejection:
    parsed = parse_event(raw, now_ms=NOW, **kw)
    assert isinstance(parsed, Rejection), parsed
    return parsed


def test_normalizes_aliases_times_and_context():
    event = ok(
        {
            "event_id": "e1",
            "user_id": 42,
            "event_type": "PV",
            "item_id": "sku-1",
            "category": " Shoes ",
            "price": "19.5",
            "event_time": NOW // 1000,
            "context": {"device": "Mobile", "country": "de"},
        }
    )
    assert event.user_id == "42"
    assert event.event_type == PRODUCT_VIEW
    assert event.event_time_ms == NOW
    assert event.category == "shoes"
    assert event.price == 19.5
    assert event.quantity == 1
    assert (event.device, event.country) == ("mobile", "DE")


def test_iso_time_and_aliases():
    event = ok(
        {"user_id": "u", "event_type": "buy", "item_id": "i", "event_time": "2023-11-14T22:13:20Z"}
    )
    assert event.event_type == PURCHASE
    assert event.event_time_ms == NOW


def test_missing_event_id_gets_stable_content_hash():
    payload = {"user_id": "u", "event_type": "cart", "item_id": "i", "event_time": NOW}
    first, second = ok(payload), ok(dict(payload))
    assert first.event_type == ADD_TO_CART
    assert first.event_id == second.event_id == content_event_id(payload)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('{"event_type": "pv", "item_id": "i", "event_time": 1700000000000}', "missing_user_id"),
        ('{"user_id": "u", "event_type": "teleport", "event_time": 1}', "unknown_event_type"),
        ('{"user_id": "u", "event_type": "pv", "event_time": 1700000000000}', "missing_item_id"),
        ('{"user_id": "u", "event_type": "page_view"}', "invalid_event_time"),
        ('{"user_id": "u", "event_type": "page_view", "event_time": "soon"}', "invalid_event_time"),
        ('{"user_id": "u", "event_type": "page_view", "event_time": 9e15}', "event_time_in_future"),
        (
            '{"user_id": "u", "event_type": "buy", "item_id": "i", "event_time": 1700000000000,'
            ' "price": -3}',
            "invalid_price",
        ),
        (
            '{"user_id": "u", "event_type": "buy", "item_id": "i", "event_time": 1700000000000,'
            ' "quantity": 1.5}',
            "invalid_quantity",
        ),
        (
            '{"user_id": {"a": 1}, "event_type": "page_view", "event_time": 1700000000000}',
            "invalid_user_id",
        ),
        (
            '{"user_id": "u", "event_type": "page_view", "event_time": 1700000000000,'
            ' "properties": {"x": [1]}}',
            "invalid_properties",
        ),
    ],
)
def test_rejections_have_reasons(raw, reason):
    assert rejected(raw).reason == reason


def test_payload_size_limit():
    big = json.dumps({"user_id": "u", "event_type": "page_view", "event_time": NOW, "p": "x" * 500})
    assert rejected(big, limits=ValidationLimits(max_event_bytes=100)).reason == "payload_too_large"


def test_too_old_event_rejected():
    limits = ValidationLimits(max_event_age_ms=1000)
    raw = json.dumps({"user_id": "u", "event_type": "page_view", "event_time": NOW - 5000})
    assert rejected(raw, limits=limits).reason == "event_time_too_old"


def test_dead_letter_keeps_raw_payload_and_reason():
    raw = b'{"user_id": "u", "event_type": "nope"}'
    record = json.loads(dead_letter(raw, rejected(raw), source="kafka", now_ms=NOW))
    assert record["raw"] == raw.decode()
    assert record["reason"] == "unknown_event_type"
    assert record["source"] == "kafka"


def test_wire_round_trip():
    event = ok(
        {
            "event_id": "e",
            "user_id": "u",
            "event_type": "purchase",
            "item_id": "i",
            "price": 3.5,
            "quantity": 2,
            "event_time": NOW,
            "context": {"session_id": "s"},
            "properties": {"age_band": "25-34"},
        }
    )
    assert ok(json.loads(event.to_json())) == event


def test_topic_family():
    assert topic_family("purchase") == "purchase"
    assert topic_family("rating") == "engagement"
    assert topic_family("product_view") == "clickstream"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parser_never_raises_on_garbage(raw):
    assert isinstance(parse_event(raw, now_ms=NOW), Event | Rejection)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "user_id": _json_values,
            "event_type": st.sampled_from(["pv", "buy", "cart", "x", ""]) | _json_values,
            "item_id": _json_values,
            "event_time": _json_values,
            "price": _json_values,
            "quantity": _json_values,
            "context": _json_values,
            "properties": _json_values,
        },
    )
)
def test_parser_never_raises_on_wrong_types(payload):
    parsed = parse_event(json.dumps(payload), now_ms=NOW)
    assert isinstance(parsed, Event | Rejection)
    if isinstance(parsed, Rejection):
        assert parsed.reason and parsed.detail


@pytest.mark.parametrize("value", ["five", "nan", "inf", "", "1e999"])
def test_unreadable_ratings_are_rejected_before_the_job_learns_them(value):
    base = {"user_id": "u", "event_type": "rating", "item_id": "i", "event_time": NOW}
    rejection = rejected(json.dumps({**base, "properties": {"rating": value}}))
    assert rejection.reason == "invalid_rating"
    assert ok({**base, "properties": {"rating": "4.5"}}).properties["rating"] == "4.5"
    assert ok({**base, "properties": {"rating": 3}}).properties["rating"] == "3"


def test_learning_reads_ratings_without_ever_raising():
    from flink_jobs.learning import interaction_weight, rating_of

    event = ok({"user_id": "u", "event_type": "rating", "item_id": "i", "event_time": NOW})
    assert rating_of(event) is None and interaction_weight("rating", rating_of(event)) == 0.0
    odd = Event("e", "u", "rating", NOW, item_id="i", properties={"rating": "five"})
    assert rating_of(odd) is None  # even if one got past the parser
