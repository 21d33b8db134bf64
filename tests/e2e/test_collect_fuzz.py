"""Fuzzing ``Collector.Collect`` on a real gRPC server process and the real Kafka broker.

Bad input of every kind goes to a ``serving.server`` process started on the session's
Kafka and Redis (fixtures in ``tests/conftest.py``; no Flink job needed): wrong values
in typed fields, missing user ids, unknown event types, events over the size limit,
times far in the future or past, duplicate event ids, empty, full and oversized
batches, requests whose bytes are not a ``CollectRequest`` (garbage, invalid UTF-8)
and calls with a deadline too short to answer. Every call must end with a status its
input class allows (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED), never
UNKNOWN or INTERNAL.

Every event carries a marker (``properties.fz``), so each one is accounted for on
Kafka, read back with a consumer: an accepted event once on its family's topic, a
rejected one once on ``events_dlq`` (source ``grpc``) with the reason the response
gave for its index, nothing at all of a refused call, and all or nothing of a call
whose deadline expired (the server finishes a call the client gave up on). Afterwards
the server still answers health checks, and its metrics count the refused calls and
no INTERNAL/UNKNOWN.

The server runs with ``features.max_event_age_s`` = 30 days (default 100 years, which
no positive millisecond time can exceed), so "too old" is reachable.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops import stack
from ops.infra import kafka_broker as kafka_broker_mod
from ops.infra.processes import free_port
from personalization.events import (
    ACCEPTED_TYPES,
    ITEM_EVENT_TYPES,
    EventRejected,
    normalize_event_type,
    topic_family,
)
from personalization.settings import Settings
from personalization.v1 import events_pb2, recommender_pb2
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

FUZZ_SERVER = stack.Component("grpc-server-fuzz", "serving.server")
COLLECT_METHOD = "/personalization.v1.Collector/Collect"
COLLECTOR_SERVICE = "personalization.v1.Collector"
RUN = uuid.uuid4().hex[:10]
MARKER_KEY = "fz"
MARKER_RE = re.compile(rf'"{MARKER_KEY}":"(fz-{RUN}-\d+-\d+)"')
DAY_MS = 24 * 3600 * 1000
HOUR_MS = 3600 * 1000
MAX_AGE_S = 30 * 24 * 3600
INT64_MAX = 2**63 - 1
# Accepted times: no event accepted here lies in the future (the skew limit would let
# up to 24 h through), because a Flink job sharing this Kafka in a full test session
# would move its one watermark that far ahead and fire other tests' session, cart and
# A/B timers early. Far-future times are fuzzed (rejected); accepted ones end at now.
# The job reads properties.rating as a number (flink_jobs/operators.py,
# CollaborativeFiltering: float(rating)), and a non-numeric one fails it; these tests
# may share Kafka with a running job, so fuzzed property names leave "rating" out.
RESERVED_PROPERTIES = frozenset({MARKER_KEY, "rating", "personalization"})
CONTEXT_FIELDS = ("device", "country", "referrer", "session_id", "page")
ALLOWED_STATUS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)


def now_ms() -> int:
    return int(time.time() * 1000)


# Strategies draw times as offsets from the clock at use: their bounds must not move
# between runs (hypothesis replays draws), so absolute bounds come from this constant.
T0_MS = now_ms()


def at_offset(low_ms: int, high_ms: int) -> st.SearchStrategy[int]:
    """A time between now + low and now + high, now taken when it is drawn."""
    return st.integers(low_ms, high_ms).map(lambda offset: now_ms() + offset)


# --- what each event and call is expected to do ----------------------------------------


@dataclass(frozen=True)
class Expect:
    """``ok``: must be accepted; ``reasons``: must be rejected with one of them;
    neither (``Expect()``): anything, as long as response and Kafka agree."""

    ok: bool = False
    reasons: frozenset[str] = frozenset()

    @property
    def anything(self) -> bool:
        return not self.ok and not self.reasons


ACCEPT = Expect(ok=True)
ANY = Expect()


def reject(*reasons: str) -> Expect:
    return Expect(reasons=frozenset(reasons))


@dataclass
class Case:
    """One event before it is marked: the proto and what the server must do with it."""

    event: events_pb2.Event
    expect: Expect
    label: str


@dataclass
class Call:
    number: int
    status: grpc.StatusCode
    label: str
    # Per index of the request the server decoded: marker (None = unmarked) and expectation.
    markers: list[str | None]
    expects: list[Expect]
    response: recommender_pb2.CollectResponse | None = None
    # Every marker placed in the bytes sent (a refused call must leak none of them).
    sent_markers: list[str] = field(default_factory=list)


# --- event strategies ----------------------------------------------------------------

ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
texts = st.text(max_size=40)
properties_st = st.dictionaries(
    st.text(min_size=1, max_size=20).filter(lambda k: k not in RESERVED_PROPERTIES),
    st.text(max_size=30),
    max_size=8,
)
TYPE_SPELLINGS = [
    *sorted(ACCEPTED_TYPES),
    "pv",
    "cart",
    "buy",
    "fav",
    "PageView",
    " Product View ",
    "ADD-TO-CART",
    "order",
]


def is_unknown_type(raw: str) -> bool:
    if not raw.strip():
        return False
    try:
        normalize_event_type(raw)
    except EventRejected:
        return True
    return False


@st.composite
def valid_event(draw: st.DrawFn) -> events_pb2.Event:
    spelling = draw(st.sampled_from(TYPE_SPELLINGS))
    canonical = normalize_event_type(spelling)
    event = events_pb2.Event(
        user_id=draw(ids),
        event_type=spelling,
        event_time_ms=draw(at_offset(-29 * DAY_MS, 0)),
        category=draw(texts),
        price=draw(st.floats(0, 1e9, allow_nan=False)),
        quantity=draw(st.integers(0, 1_000_000)),
    )
    if canonical in ITEM_EVENT_TYPES or draw(st.booleans()):
        event.item_id = draw(ids)
    if draw(st.booleans()):
        event.event_id = draw(st.one_of(texts, st.sampled_from([f"dup-{RUN}-{i}" for i in "ab"])))
    if draw(st.booleans()):
        for name in CONTEXT_FIELDS:
            setattr(event.context, name, draw(texts))
    for key, value in draw(properties_st).items():
        event.properties[key] = value
    if canonical == "consent":
        event.properties["personalization"] = draw(st.sampled_from(["granted", "denied"]))
    return event


def _long(n: int) -> st.SearchStrategy[str]:
    """Text longer than ``n`` characters once stripped."""
    return st.builds(lambda s, k: s * k + "x", st.sampled_from(["a", "é", "字", "-"]), st.just(n))


@st.composite
def invalid_event(draw: st.DrawFn) -> Case:
    """A valid event with exactly one thing wrong, and the reason the rules give."""
    event = draw(valid_event())
    if normalize_event_type(event.event_type) == "consent":
        event.event_type = "page_view"
        del event.properties["personalization"]
    what = draw(
        st.sampled_from(
            [
                "missing_user",
                "long_user",
                "missing_type",
                "unknown_type",
                "missing_item",
                "long_item",
                "no_time",
                "negative_time",
                "future",
                "too_old",
                "too_old_seconds",
                "long_event_id",
                "long_context",
                "long_category",
                "empty_property_name",
                "too_many_properties",
                "long_property",
                "consent_without_value",
                "bad_price",
                "bad_quantity",
                "too_large",
            ]
        )
    )
    expect: Expect
    if what == "missing_user":
        event.user_id = draw(st.sampled_from(["", " ", "\t\n", "\u3000"]))
        expect = reject("missing_user_id")
    elif what == "long_user":
        event.user_id = draw(_long(256))
        expect = reject("invalid_user_id")
    elif what == "missing_type":
        event.event_type = draw(st.sampled_from(["", "  ", "\n"]))
        expect = reject("missing_event_type")
    elif what == "unknown_type":
        event.event_type = draw(st.text(min_size=1, max_size=30).filter(is_unknown_type))
        expect = reject("unknown_event_type")
    elif what == "missing_item":
        event.event_type = draw(st.sampled_from(sorted(ITEM_EVENT_TYPES)))
        event.item_id = draw(st.sampled_from(["", " "]))
        expect = reject("missing_item_id")
    elif what == "long_item":
        event.item_id = draw(_long(256))
        expect = reject("invalid_item_id")
    elif what == "no_time":
        event.event_time_ms = 0
        expect = reject("invalid_event_time")
    elif what == "negative_time":
        event.event_time_ms = draw(st.integers(-(2**63), -1))
        expect = reject("invalid_event_time")
    elif what == "future":
        event.event_time_ms = draw(st.one_of(st.just(INT64_MAX), at_offset(25 * HOUR_MS, 10**17)))
        expect = reject("event_time_in_future")
    elif what == "too_old":
        event.event_time_ms = draw(at_offset(-(T0_MS - 10**11 - DAY_MS), -31 * DAY_MS))
        expect = reject("event_time_too_old")
    elif what == "too_old_seconds":  # below 1e11 a time is read as seconds
        event.event_time_ms = draw(st.integers(1, (T0_MS - 31 * DAY_MS) // 1000))
        expect = reject("event_time_too_old")
    elif what == "long_event_id":
        event.event_id = draw(_long(256))
        expect = reject("invalid_event_id")
    elif what == "long_context":
        name = draw(st.sampled_from(CONTEXT_FIELDS))
        setattr(event.context, name, draw(_long(2048)))
        expect = reject(f"invalid_context_{name}")
    elif what == "long_category":
        event.category = draw(_long(2048))
        expect = reject("invalid_category")
    elif what == "empty_property_name":
        event.properties[""] = draw(texts)
        expect = reject("invalid_properties")
    elif what == "too_many_properties":
        for i in range(draw(st.integers(64, 80))):
            event.properties[f"p{i}"] = "v"
        expect = reject("invalid_properties")
    elif what == "long_property":
        if draw(st.booleans()):
            event.properties["k" * 257] = "v"
        else:
            event.properties["note"] = draw(_long(2048))
        expect = reject("invalid_properties")
    elif what == "consent_without_value":
        event.event_type = "consent"
        value = draw(st.sampled_from(["", "yes", "GRANTED", "maybe"]))
        if value:
            event.properties["personalization"] = value
        expect = reject("invalid_consent")
    elif what == "bad_price":
        event.price = draw(
            st.one_of(
                st.sampled_from([math.nan, math.inf, -math.inf]),
                st.floats(max_value=-1e-9, allow_nan=False),
                st.floats(min_value=1e9 + 1, allow_nan=False),
            )
        )
        expect = reject("invalid_price")
    elif what == "bad_quantity":
        event.quantity = draw(
            st.one_of(st.integers(-(2**63), -1), st.integers(10**6 + 1, INT64_MAX))
        )
        expect = reject("invalid_quantity")
    else:  # over features.max_event_bytes (64 KiB); sorts after the marker, see pad()
        pad(event, draw(st.integers(64 * 1024 + 1, 160 * 1024)))
        expect = reject("payload_too_large")
    return Case(event, expect, what)


@st.composite
def random_event(draw: st.DrawFn) -> Case:
    """Any value in any field: the outcome is whatever the rules say, consistently."""
    anything = st.text(max_size=300)
    event = events_pb2.Event(
        event_id=draw(anything),
        user_id=draw(anything),
        event_type=draw(st.one_of(anything, st.sampled_from(TYPE_SPELLINGS))),
        item_id=draw(anything),
        category=draw(anything),
        price=draw(st.floats()),
        quantity=draw(st.integers(-(2**63), INT64_MAX)),
        event_time_ms=draw(st.one_of(st.integers(-(2**63), INT64_MAX), at_offset(-DAY_MS, 0))),
    )
    read_ms = (
        event.event_time_ms * 1000 if 0 < event.event_time_ms < 10**11 else event.event_time_ms
    )
    if now_ms() < read_ms <= now_ms() + 25 * HOUR_MS:  # see "Accepted times" above
        event.event_time_ms = now_ms()
    for name in CONTEXT_FIELDS:
        setattr(event.context, name, draw(anything))
    for key, value in draw(st.dictionaries(st.text(max_size=20), anything, max_size=70)).items():
        if key not in RESERVED_PROPERTIES:
            event.properties[key] = value
    return Case(event, ANY, "random")


def pad(event: events_pb2.Event, size: int) -> None:
    """Grow the event's JSON past ``size`` bytes in a property that sorts after the
    marker, so the DLQ's truncated copy of an oversized event still names it."""
    event.properties["zz_pad"] = "p" * size


event_case = st.one_of(
    valid_event().map(lambda e: Case(e, ACCEPT, "valid")),
    invalid_event(),
    random_event(),
)


def mark(events: Sequence[events_pb2.Event], number: int) -> list[str]:
    markers = []
    for index, event in enumerate(events):
        marker = f"fz-{RUN}-{number}-{index}"
        event.properties[MARKER_KEY] = marker
        markers.append(marker)
    return markers


def marker_of(event: events_pb2.Event) -> str | None:
    marker = event.properties.get(MARKER_KEY, "")
    return marker if MARKER_RE.fullmatch(f'"{MARKER_KEY}":"{marker}"') else None


# --- the server, the client and the Kafka read-back --------------------------------------


@dataclass
class Harness:
    settings: Settings
    channel: grpc.Channel
    kafka: KafkaReadBack
    calls: list[Call] = field(default_factory=list)
    # Markers a corrupted request may share with another call: not counted per event.
    ambiguous: set[str] = field(default_factory=set)
    _next: int = 0

    def number(self) -> int:
        self._next += 1
        return self._next

    def send(self, body: bytes, timeout_s: float) -> tuple[grpc.StatusCode, bytes | None]:
        invoke = self.channel.unary_unary(COLLECT_METHOD)  # bytes in, bytes out
        try:
            reply = invoke(body, timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            assert code in ALLOWED_STATUS, f"Collect answered {code}: {err.details()}"  # type: ignore[attr-defined]
            return code, None
        return grpc.StatusCode.OK, reply

    def collect(self, cases: Sequence[Case], label: str, timeout_s: float = 15.0) -> Call:
        number = self.number()
        events = [case.event for case in cases]
        sent = mark(events, number)
        body = recommender_pb2.CollectRequest(events=events).SerializeToString()
        code, reply = self.send(body, timeout_s)
        call = Call(number, code, label, list(sent), [c.expect for c in cases], sent_markers=sent)
        if reply is not None:
            call.response = recommender_pb2.CollectResponse.FromString(reply)
        self.calls.append(call)
        return call


class KafkaReadBack:
    """Reads the event topics and the DLQ from where they stood at module start."""

    def __init__(self, settings: Settings) -> None:
        k = settings.kafka
        self.dlq_topic = k.dlq_topic
        self.family_topic = {
            "clickstream": k.clickstream_topic,
            "purchase": k.purchase_topic,
            "engagement": k.engagement_topic,
        }
        self.consumer = Consumer(
            {
                "bootstrap.servers": k.bootstrap_servers,
                "group.id": f"fuzz-{RUN}",
                "enable.auto.commit": False,
                "fetch.message.max.bytes": 8 * 1024 * 1024,
            }
        )
        metadata = self.consumer.list_topics(timeout=10)
        self.partitions = [
            TopicPartition(topic, p)
            for topic in (*k.event_topics, k.dlq_topic)
            for p in metadata.topics[topic].partitions
        ]
        start = [
            TopicPartition(tp.topic, tp.partition, high)
            for tp, high in zip(self.partitions, self._high_watermarks(), strict=True)
        ]
        self.consumer.assign(start)
        self.position = {(tp.topic, tp.partition): tp.offset for tp in start}
        # marker -> [(topic, reason or None, record)]
        self.records: dict[str, list[tuple[str, str | None, dict[str, Any]]]] = {}

    def _high_watermarks(self) -> list[int]:
        def query() -> list[int] | None:
            try:
                return [
                    self.consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in self.partitions
                ]
            except KafkaException:  # a just-started broker: leaders not known yet
                return None

        result: list[int] = wait_for(query, 30, "partition end offsets")
        return result

    def _ends(self) -> dict[tuple[str, int], int]:
        ends = self._high_watermarks()
        return {
            (tp.topic, tp.partition): end for tp, end in zip(self.partitions, ends, strict=True)
        }

    def drain(self, timeout_s: float = 30.0) -> None:
        """Read everything written so far (up to the current end of every partition)."""
        ends = self._ends()
        deadline = time.monotonic() + timeout_s
        while any(self.position[key] < end for key, end in ends.items()):
            assert time.monotonic() < deadline, f"Kafka read-back stalled at {self.position}"
            for message in self.consumer.consume(num_messages=1000, timeout=0.1):
                topic, partition = message.topic(), message.partition()
                offset, value = message.offset(), message.value()
                if message.error() or topic is None or partition is None or offset is None:
                    continue
                self.position[(topic, partition)] = offset + 1
                self._record(topic, value or b"")

    def _record(self, topic: str, value: bytes) -> None:
        text = value.decode("utf-8")
        if topic == self.dlq_topic:
            record = json.loads(text)
            if record.get("source") != "grpc":
                return  # the Flink job's dead letters, if one runs in this session
            found = MARKER_RE.search(record["raw"])
            reason = record["reason"]
        else:
            record = json.loads(text)
            found = MARKER_RE.search(text)
            reason = None
        if found:
            self.records.setdefault(found.group(1), []).append((topic, reason, record))

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="module")
def harness(redis_server: Settings, kafka_broker: Settings) -> Iterator[Harness]:
    base = kafka_broker
    settings = base.model_copy(
        update={
            "serving": base.serving.model_copy(update={"port": free_port(), "max_workers": 8}),
            "metrics": base.metrics.model_copy(update={"serving_port": free_port()}),
            "features": base.features.model_copy(update={"max_event_age_s": MAX_AGE_S}),
            # Topics of its own: the session's Flink job must never see fuzzed events (an
            # accepted time up to a day ahead would move its watermark for every test).
            "kafka": base.kafka.model_copy(
                update={
                    name: f"fuzz-{getattr(base.kafka, name)}"
                    for name in (
                        "clickstream_topic",
                        "purchase_topic",
                        "engagement_topic",
                        "dlq_topic",
                        "exposures_topic",
                    )
                }
            ),
        }
    )
    kafka_broker_mod.ensure_topics(settings)
    kafka = KafkaReadBack(settings)
    stack.start_component(settings, FUZZ_SERVER)
    try:
        try:  # generous: importing the server (Feast, grpc) is slow on a loaded machine
            stack.wait_server_ready(settings, timeout_s=180)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{FUZZ_SERVER.process(settings).log_tail(30)}") from None
        with grpc.insecure_channel(f"{settings.serving.host}:{settings.serving.port}") as channel:
            yield Harness(settings, channel, kafka)
    finally:
        process = FUZZ_SERVER.process(settings)
        process.stop()
        kafka.close()
        log = process.logfile.read_text(errors="replace")
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-4000:]}"


# --- accounting ----------------------------------------------------------------------


def check_event(call: Call, index: int, reason: str | None, seen: list[Any], kafka: Any) -> None:
    """One event of an answered call: response, expectation and Kafka agree."""
    expect = call.expects[index]
    where = f"call {call.number} ({call.label}) event {index}"
    if reason is None:
        assert expect.ok or expect.anything, f"{where}: accepted, expected {expect}"
    else:
        assert reason in expect.reasons or expect.anything, f"{where}: {reason}, expected {expect}"
    if call.markers[index] is None:
        return
    assert len(seen) == 1, f"{where}: {len(seen)} records on Kafka: {seen}"
    topic, dlq_reason, record = seen[0]
    if reason is None:
        family = topic_family(record["event_type"])
        assert topic == kafka.family_topic[family], f"{where}: on {topic}, type {family}"
    else:
        assert (topic, dlq_reason) == (kafka.dlq_topic, reason), f"{where}: {seen[0][:2]}"


def account(h: Harness) -> None:
    """Every call's events, as Kafka shows them, agree with what the call answered."""
    calls = {c.number: c for c in h.calls}

    def deadline_calls_settled() -> bool:
        h.kafka.drain()
        for call in calls.values():
            if call.status == grpc.StatusCode.DEADLINE_EXCEEDED:
                present = sum(1 for m in call.markers if m and m in h.kafka.records)
                if present not in (0, sum(1 for m in call.markers if m)):
                    return False
        return True

    wait_for(deadline_calls_settled, 20, "calls past their deadline to finish on Kafka")
    records = h.kafka.records
    known = {m for c in calls.values() for m in (*c.markers, *c.sent_markers) if m}
    strays = [m for m in records if m not in known]
    assert not strays, f"records on Kafka that belong to no call: {strays[:3]}"
    for call in calls.values():
        if call.status == grpc.StatusCode.OK:
            assert call.response is not None
            rejected = {r.index: r.reason for r in call.response.rejected}
            n = len(call.markers)
            assert len(rejected) == len(call.response.rejected), f"call {call.number}: repeats"
            assert all(0 <= i < n for i in rejected), f"call {call.number}: index out of range"
            assert call.response.accepted == n - len(rejected), f"call {call.number}: counts"
            for index, marker in enumerate(call.markers):
                if marker in h.ambiguous:
                    continue
                seen = records.get(marker, []) if marker else []
                check_event(call, index, rejected.get(index), seen, h.kafka)
        elif call.status == grpc.StatusCode.DEADLINE_EXCEEDED:
            for index, marker in enumerate(call.markers):
                if marker in h.ambiguous:
                    continue
                seen = records.get(marker, []) if marker else []
                if seen:  # the server finished it: each event once, where it belongs
                    reason = seen[0][1] if seen[0][0] == h.kafka.dlq_topic else None
                    check_event(call, index, reason, seen, h.kafka)
        else:  # refused as a whole: nothing of it may reach Kafka
            leaked = [m for m in call.sent_markers if m in records and m not in h.ambiguous]
            assert not leaked, f"call {call.number} ({call.status}) leaked {leaked[:3]}"


# --- the fuzz runs -------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Case], float | None]:
    cases = draw(st.lists(event_case, max_size=12))
    if len(cases) > 1 and draw(st.booleans()):
        # Duplicate event ids inside a batch: Collect forwards every copy (the job
        # dedupes by id), so each must be accepted and on Kafka once.
        shared = f"same-{RUN}-{draw(st.integers(0, 3))}"
        for case in cases:
            if case.expect.ok:
                case.event.event_id = shared
    deadline = draw(st.one_of(st.none(), st.floats(0.0005, 0.02))) if draw(st.booleans()) else None
    return cases, deadline


MIXED_EXAMPLES = 330


@settings(FUZZ, max_examples=MIXED_EXAMPLES)
@given(batch=batches())
def _mixed(h: Harness, batch: tuple[list[Case], float | None]) -> None:
    cases, deadline = batch
    call = h.collect(cases, "mixed", timeout_s=deadline or 15.0)
    if deadline is None:
        assert call.status == grpc.StatusCode.OK, f"call {call.number}: {call.status}"
    else:
        assert call.status in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mixed_batches_are_answered_and_accounted_for(harness: Harness) -> None:
    """Valid, invalid and random events, duplicate ids, empty batches, short deadlines."""
    before = len(harness.calls)
    _mixed(harness)
    calls = harness.calls[before:]
    assert len(calls) >= MIXED_EXAMPLES * 0.9
    account(harness)
    statuses = Counter(c.status for c in calls)
    assert statuses[grpc.StatusCode.OK] > len(calls) / 2, statuses
    outcomes = Counter(
        reason
        for c in calls
        if c.response is not None
        for reason in [r.reason for r in c.response.rejected]
    )
    # The run reached the rules it is about (hypothesis draws them every time at this size).
    for reason in ("missing_user_id", "unknown_event_type", "payload_too_large"):
        assert outcomes[reason] > 0, outcomes
    assert any(c.response is not None and not c.markers for c in calls), "no empty batch"


@st.composite
def undecodable(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    """Bytes that claim to be a CollectRequest, as (kind, events, how to break them).

    Markers are placed per call by the test (from the harness' call counter), not
    drawn: hypothesis may draw the same example twice, and two calls sharing markers
    could not be told apart on Kafka."""
    kind = draw(st.sampled_from(["garbage", "invalid_utf8", "truncated", "flipped"]))
    if kind == "garbage":
        return kind, [], {"body": draw(st.binary(min_size=1, max_size=400))}
    events = [draw(valid_event()) for _ in range(draw(st.integers(1, 4)))]
    how: dict[str, Any] = {
        "bad": draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b"])),
        "victim": draw(st.integers(0, len(events) - 1)),
        "fraction": draw(st.floats(0.0, 1.0, exclude_max=True)),
        "xor": draw(st.integers(1, 255)),
    }
    return kind, events, how


def undecodable_body(kind: str, events: list[Any], how: dict[str, Any]) -> bytes:
    if kind == "garbage":
        body: bytes = how["body"]
        return body
    body = recommender_pb2.CollectRequest(events=events).SerializeToString()
    if kind == "invalid_utf8":
        # Append a user_id (field 2) holding bytes that are not UTF-8 to one event: the
        # later value wins, and proto3 strings must be valid UTF-8.
        bad = how["bad"]
        pieces = [e.SerializeToString() for e in events]
        pieces[how["victim"]] += b"\x12" + bytes([len(bad)]) + bad
        return b"".join(b"\x0a" + _varint(len(p)) + p for p in pieces)
    if kind == "truncated":
        return body[: 1 + int(how["fraction"] * (len(body) - 1))]
    position = int(how["fraction"] * len(body))
    return body[:position] + bytes([body[position] ^ how["xor"]]) + body[position + 1 :]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


UNDECODABLE_EXAMPLES = 80


@settings(FUZZ, max_examples=UNDECODABLE_EXAMPLES)
@given(case=undecodable())
def _undecodable(h: Harness, case: tuple[str, list[Any], dict[str, Any]]) -> None:
    kind, events, how = case
    number = h.number()
    sent = mark(events, number) if events else []
    body = undecodable_body(kind, events, how)
    try:
        decoded: recommender_pb2.CollectRequest | None = recommender_pb2.CollectRequest.FromString(
            body
        )
    except Exception:
        decoded = None
    code, reply = h.send(body, 15.0)
    call = Call(number, code, f"bytes:{kind}", [], [], sent_markers=sent)
    if decoded is None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{kind}: {code}"
    else:  # the same bytes decode here: the server answers for what they say
        assert code == grpc.StatusCode.OK, f"{kind}: decodable bytes answered {code}"
        assert reply is not None
        call.response = recommender_pb2.CollectResponse.FromString(reply)
        markers = [marker_of(e) for e in decoded.events]
        # A flipped byte can turn a marker into another one (of this call or, rarely,
        # of another): such copies cannot be told apart on Kafka, so those markers are
        # left out of every per-event count.
        twice = {m for m, n in Counter(markers).items() if n > 1}
        odd = {m for m in markers if m and (m in twice or m not in sent)}
        h.ambiguous |= odd
        call.markers = [None if m in odd else m for m in markers]
        call.sent_markers += [m for m in markers if m]
        call.expects = [ANY] * len(decoded.events)
    h.calls.append(call)


def test_undecodable_requests_get_invalid_argument(harness: Harness) -> None:
    """Garbage, invalid UTF-8, truncated and bit-flipped bodies: INVALID_ARGUMENT (was
    INTERNAL, grpcio's answer to a request its deserializer refuses) or, when the bytes
    happen to decode, an ordinary answer."""
    before = len(harness.calls)
    _undecodable(harness)
    calls = harness.calls[before:]
    assert len(calls) >= UNDECODABLE_EXAMPLES * 0.9
    assert sum(c.status == grpc.StatusCode.INVALID_ARGUMENT for c in calls) > len(calls) / 4
    assert any(c.label == "bytes:invalid_utf8" for c in calls)
    account(harness)


LIMIT_KINDS = ("full_batch", "over_batch", "huge_event", "over_message")


@settings(FUZZ, max_examples=4)
@given(data=st.data())
def _limits(h: Harness, kind: str, data: st.DataObject) -> None:
    max_batch = h.settings.serving.max_batch_events
    max_message = h.settings.serving.max_message_bytes
    if kind in ("full_batch", "over_batch"):
        # A mixed template repeated up to the batch size (markers keep copies apart).
        # Small events only, so even max_batch_events + 200 of them stay far below
        # max_message_bytes (the batch limit is what is tested here).
        small = event_case.filter(lambda c: c.event.ByteSize() < 2000)
        template = data.draw(st.lists(small, min_size=1, max_size=8), label="template")
        size = (
            max_batch
            if kind == "full_batch"
            else data.draw(st.integers(max_batch + 1, max_batch + 200), label="size")
        )
        cases = [
            Case(_copy(template[i % len(template)].event), template[i % len(template)].expect, "")
            for i in range(size)
        ]
        call = h.collect(cases, kind, timeout_s=30.0)
        expected = (
            grpc.StatusCode.OK if kind == "full_batch" else grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert call.status == expected, f"{kind} of {size}: {call.status}"
        return
    if kind == "huge_event":
        # Over the event limit but within the request limit: rejected in the response
        # and dead-lettered (before the fix, a DLQ record over Kafka's record limit
        # made the whole call fail with UNKNOWN).
        size = data.draw(st.integers(1_000_000, max_message - 200_000), label="size")
        big = data.draw(valid_event())
        pad(big, size)
        cases = [
            Case(data.draw(valid_event()), ACCEPT, "valid"),
            Case(big, reject("payload_too_large"), "huge"),
        ]
        cases.append(Case(data.draw(valid_event()), ACCEPT, "valid"))
        call = h.collect(cases, kind, timeout_s=30.0)
        assert call.status == grpc.StatusCode.OK, f"{kind} of {size} bytes: {call.status}"
        return
    size = data.draw(st.integers(max_message + 1, max_message + 2_000_000), label="size")
    big = data.draw(valid_event())
    pad(big, size)
    call = h.collect([Case(big, reject("payload_too_large"), "over_message")], kind, 30.0)
    assert call.status == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{kind}: {call.status}"


def _copy(event: events_pb2.Event) -> events_pb2.Event:
    copy = events_pb2.Event()
    copy.CopyFrom(event)
    return copy


@pytest.mark.parametrize("kind", LIMIT_KINDS)
def test_batch_and_message_limits(harness: Harness, kind: str) -> None:
    """A full batch of max_batch_events is taken; one more event is RESOURCE_EXHAUSTED,
    as is a request over max_message_bytes; a single event of megabytes is rejected
    per index (payload_too_large) and dead-lettered."""
    _limits(harness, kind)
    account(harness)


def test_server_still_healthy_and_metrics_agree(harness: Harness) -> None:
    assert harness.calls, "run the fuzz tests of this module first"
    account(harness)
    assert FUZZ_SERVER.process(harness.settings).is_running()
    stub = health_pb2_grpc.HealthStub(harness.channel)
    for service in ("", COLLECTOR_SERVICE):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    # The servicer's own refusals are counted (gRPC refuses an oversized message before
    # any interceptor sees it, so those are not).
    port = harness.settings.metrics.serving_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    errors: Counter[str] = Counter()
    for line in text.splitlines():
        found = re.match(r"pz_serving_rpc_errors_total\{([^}]*)\} (\S+)$", line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
            if labels.get("method") == "Collect":
                errors[labels["code"]] += int(float(found.group(2)))
    refused = Counter(c.label for c in harness.calls if c.status != grpc.StatusCode.OK)
    undecodable = sum(
        1
        for c in harness.calls
        if c.status == grpc.StatusCode.INVALID_ARGUMENT and c.label.startswith("bytes:")
    )
    too_many = refused["over_batch"]
    statuses = Counter(c.status.name for c in harness.calls)
    events = sum(len(c.sent_markers) or len(c.markers) for c in harness.calls)
    reasons = Counter(
        r.reason for c in harness.calls if c.response is not None for r in c.response.rejected
    )
    print(f"\nCollect fuzz: {len(harness.calls)} calls, {events} events, {dict(statuses)}")
    print(f"rejections by reason: {dict(reasons.most_common())}")
    assert errors["INTERNAL"] == 0 and errors["UNKNOWN"] == 0, errors
    assert errors["INVALID_ARGUMENT"] == undecodable, (errors, refused)
    assert errors["RESOURCE_EXHAUSTED"] == too_many, (errors, refused)
