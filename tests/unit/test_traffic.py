"""Traffic: the session generator, dataset replay readers and the Kafka sender logic."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from personalization import events as ev
from personalization.settings import PROJECT_ROOT, Settings
from traffic import replay
from traffic.generator import (
    DEFAULT_START_MS,
    GeneratorConfig,
    TrafficGenerator,
    generate_events,
)
from traffic.sender import BucketState, TimeShift, TrafficSender, pause_for, take_token

NOW_MS = int(time.time() * 1000)
T0 = 1_700_000_000_000  # a source event time (ms)


@pytest.fixture(scope="module")
def generated() -> list[dict[str, Any]]:
    return generate_events(20_000, seed=7)


def _sessions(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_session[event["context"]["session_id"]].append(event)
    return by_session


# --- generator -------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed() -> None:
    a = generate_events(3_000, seed=11)
    b = generate_events(3_000, seed=11)
    c = generate_events(3_000, seed=12)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


def test_generated_events_validate_and_are_unique_and_ordered(
    generated: list[dict[str, Any]],
) -> None:
    now_ms = generated[-1]["event_time"] + 1
    ids = set()
    for event in generated:
        parsed = ev.validate_event(event, now_ms=now_ms)
        # Already in normalized form: the wire dict survives a normalization round trip.
        assert parsed.event_type == event["event_type"]
        assert parsed.event_time_ms == event["event_time"]
        ids.add(parsed.event_id)
    assert len(ids) == len(generated)
    times = [e["event_time"] for e in generated]
    assert times == sorted(times)
    assert times[0] >= DEFAULT_START_MS
    # Raw JSON round trip through parse_event as a Kafka value.
    raw = json.dumps(generated[0], separators=(",", ":"))
    assert isinstance(ev.parse_event(raw, now_ms=now_ms), ev.Event)


def test_generated_mix_has_every_type_and_abandoned_carts(
    generated: list[dict[str, Any]],
) -> None:
    types = Counter(e["event_type"] for e in generated)
    assert set(types) == set(ev.EVENT_TYPES)
    assert types[ev.PRODUCT_VIEW] == max(types.values())
    sessions = _sessions(generated)
    carted = [s for s in sessions.values() if any(e["event_type"] == ev.ADD_TO_CART for e in s)]
    abandoned = [s for s in carted if not any(e["event_type"] == ev.PURCHASE for e in s)]
    bought = [s for s in carted if any(e["event_type"] == ev.PURCHASE for e in s)]
    assert abandoned and bought
    # Bounces: sessions of at most two events that end within a few seconds.
    bounces = [
        s
        for s in sessions.values()
        if len(s) <= 2 and s[-1]["event_time"] - s[0]["event_time"] < 10_000
    ]
    assert len(bounces) > 0.05 * len(sessions)
    for event in generated:
        if event["event_type"] == ev.PURCHASE:
            assert event["price"] > 0 and event.get("quantity", 1) >= 1
            assert event["properties"]["order_id"]
        assert event["context"]["device"] in {"mobile", "desktop", "app"}
        assert {"age_band", "gender"} <= set(event["properties"])


def test_generator_sessions_have_realistic_gaps_and_preferences(
    generated: list[dict[str, Any]],
) -> None:
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in generated:
        by_user[event["user_id"]].append(event)
    # Within a session: seconds to minutes; between sessions of a user: >= 2 minutes.
    for session in _sessions(generated).values():
        gaps = [b["event_time"] - a["event_time"] for a, b in itertools.pairwise(session)]
        assert all(0 <= g < 3_600_000 for g in gaps)
    between = []
    for events in by_user.values():
        for a, b in itertools.pairwise(events):
            if a["context"]["session_id"] != b["context"]["session_id"]:
                between.append(b["event_time"] - a["event_time"])
    assert between and min(between) >= 120_000
    # Most product views of an active user fall in a few categories.
    shares = []
    for events in by_user.values():
        cats = Counter(e["category"] for e in events if e["event_type"] == ev.PRODUCT_VIEW)
        if sum(cats.values()) >= 20:
            shares.append(sum(n for _, n in cats.most_common(3)) / sum(cats.values()))
    assert shares and sum(shares) / len(shares) > 0.6


def test_generator_start_ms_and_live_mode() -> None:
    events = generate_events(50, seed=1, start_ms=1_000_000_000_000)
    assert events[0]["event_time"] >= 1_000_000_000_000

    clock = [NOW_MS]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += int(seconds * 1000)

    cfg = GeneratorConfig(seed=1, live=True, speed=10.0)
    live = list(TrafficGenerator(cfg, clock_ms=lambda: clock[0], sleep=sleep).events(200))
    times = [e["event_time"] for e in live]
    assert times == sorted(times)
    assert times[0] >= NOW_MS and slept
    # Paced: no event is stamped after the (fake) wall clock at which it was yielded.
    assert times[-1] <= clock[0]
    # Same content as the non-live stream, only the times differ.
    fixed = generate_events(200, seed=1)
    strip = [{k: v for k, v in e.items() if k != "event_time"} for e in live]
    assert strip == [{k: v for k, v in e.items() if k != "event_time"} for e in fixed]
    # A consumer slower than the simulation: times follow the clock, never the past.
    clock[0] = NOW_MS
    gen = TrafficGenerator(cfg, clock_ms=lambda: clock[0], sleep=sleep).events(20)
    for event in gen:
        clock[0] += 3_600_000
        assert event["event_time"] >= clock[0] - 3_600_000


# --- replay: Taobao --------------------------------------------------------------------


def _shared(relative: str) -> Path:
    path = replay.dataset_path(relative, Settings())
    if not path.exists():
        pytest.skip(f"shared dataset {path} not available")
    return path


def test_datasets_dir_setting_points_at_shared_folder() -> None:
    default = Settings.model_fields["datasets_dir"].default
    assert default == str(PROJECT_ROOT.parent / "shared" / "datasets")
    assert not Path(default).is_relative_to(PROJECT_ROOT)  # never inside the repo


def test_taobao_reader_on_a_small_unsorted_file(tmp_path: Path) -> None:
    lines = [
        "1,100,7,pv,1511658010",
        "1,100,7,cart,1511658020",
        "2,200,8,buy,1511658005",
        "bad,line",
        "2,201,8,fav,1511658001",
    ]
    plain = tmp_path / "UserBehavior.csv"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "behaviour.csv.gz"  # detected from the content, not the name
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        assert replay.detect_format(path) == replay.TAOBAO
        events = list(replay.iter_events(path))
        assert [e["event_type"] for e in events] == [
            ev.PRODUCT_VIEW,
            ev.ADD_TO_CART,
            ev.PURCHASE,
            ev.FAVORITE,
        ]
        assert events[0] == {
            "event_id": "tb-1-100-1511658010-pv-1",
            "user_id": "1",
            "event_type": "product_view",
            "item_id": "100",
            "category": "7",
            "event_time": 1511658010000,
        }
        assert events[3]["event_id"] == "tb-2-201-1511658001-fav-5"
        ordered = list(replay.iter_events(path, sort_by_time=True))
        assert [e["event_time"] for e in ordered] == sorted(e["event_time"] for e in events)
        assert [e["event_id"] for e in replay.iter_events(path, limit=2, sort_by_time=True)] == [
            "tb-2-201-1511658001-fav-5",
            "tb-2-200-1511658005-buy-3",
        ]
    rows = replay.load_taobao(plain)
    assert [r.to_event() for r in rows] == list(replay.iter_events(plain))
    assert replay.load_taobao(plain, limit=1)[0].behavior == "pv"


def test_taobao_sample_maps_all_behaviors_and_validates() -> None:
    path = _shared(replay.TAOBAO_SAMPLE)
    events = list(replay.iter_events(path))
    counts = Counter(e["event_type"] for e in events)
    assert counts == {
        ev.PRODUCT_VIEW: 85_773,
        ev.ADD_TO_CART: 5_292,
        ev.FAVORITE: 2_959,
        ev.PURCHASE: 2_144,
    }
    assert len({e["event_id"] for e in events}) == len(events)
    for event in events:
        ev.validate_event(event, now_ms=NOW_MS)
    times = [e["event_time"] for e in events]
    assert (min(times), max(times)) == (1_511_658_000_000, 1_511_664_909_000)
    rows = replay.load_taobao(path, limit=1000)
    assert [r.event_id for r in rows] == [e["event_id"] for e in events[:1000]]
    assert {r.category_id for r in rows} == {e["category"] for e in events[:1000]}


# --- replay: MovieLens -----------------------------------------------------------------


def test_movielens_reader_genres_and_demographics_small(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t881250949\n2\t11\t2\t881250000\n2\t12\t5\t1\n")
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy"]
    (tmp_path / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (tmp_path / "u.item").write_bytes(
        "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1\n"
        "11|Misérables, Les (1995)|01-Jan-1995||http://y|0|1|0|0|0|1\n".encode("latin-1")
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    assert replay.detect_format(tmp_path) == replay.MOVIELENS_100K
    events = list(replay.iter_events(tmp_path / "u.data"))
    assert events[0]["category"] == "animation"
    assert events[0]["properties"] == {
        "rating": "4",
        "age_band": "18-24",
        "gender": "M",
        "occupation": "technician",
    }
    assert events[1]["category"] == "action"
    assert "category" not in events[2]  # item 12 is not in u.item
    assert events[0]["event_id"] == "ml-1-10-881250949"
    bare = list(replay.iter_events(tmp_path / "u.data", demographics=False))
    assert bare[1]["properties"] == {"rating": "2"}


def test_movielens_100k_ratings_have_genre_categories() -> None:
    path = _shared(replay.MOVIELENS_100K_DATA)
    events = list(replay.iter_events(path, limit=2_000))
    assert len(events) == 2_000
    genre_names = {g.lower() for g in replay.movielens_item_genres(path.parent).values()}
    assert genre_names <= {
        line.split("|")[0].lower()
        for line in (path.parent / "u.genre").read_text(encoding="latin-1").splitlines()
        if line
    }
    for event in events:
        parsed = ev.validate_event(event, now_ms=NOW_MS)
        assert parsed.event_type == ev.RATING
        assert parsed.properties["rating"] in {"1", "2", "3", "4", "5"}
        assert parsed.category in genre_names
        assert parsed.properties["gender"] in {"M", "F"}
    # The first row (user 196, movie 242 "Kolya", a comedy).
    assert events[0]["category"] == "comedy"
    first = list(replay.iter_events(path, sort_by_time=True, limit=3))
    assert [e["event_time"] for e in first] == sorted(e["event_time"] for e in first)
    assert first[0]["event_time"] == 874_724_710_000


def test_movielens_latest_small_csv() -> None:
    path = _shared(replay.MOVIELENS_SMALL_RATINGS)
    assert replay.detect_format(path) == replay.MOVIELENS_CSV
    events = list(replay.iter_events(path, limit=100))
    assert events[0]["properties"] == {"rating": "4.0"}
    assert events[0]["category"] == "adventure"  # Toy Story: Adventure|Animation|...
    for event in events:
        ev.validate_event(event, now_ms=NOW_MS)


# --- replay: JSON lines ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz", "dump.txt"])
def test_json_lines_round_trip(tmp_path: Path, name: str) -> None:
    events = generate_events(300, seed=3)
    path = tmp_path / name
    assert replay.write_jsonl(events, path) == 300
    assert replay.detect_format(path) == replay.JSONL
    assert list(replay.iter_events(path)) == events
    assert list(replay.iter_events(path, limit=5)) == events[:5]
    shuffled = list(reversed(events))
    replay.write_jsonl(shuffled, path)
    assert list(replay.iter_events(path, sort_by_time=True)) == sorted(
        events, key=lambda e: e["event_time"]
    )


def test_json_lines_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"event_type": "pv"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3"):
        list(replay.iter_events(path))


def test_detect_format_rejects_unknown(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a;b;c\n")
    with pytest.raises(ValueError):
        replay.detect_format(path)


# --- sender: pure pieces ---------------------------------------------------------------


def _drive(rate: float, burst: float, n: int) -> float:
    """Send n events with a fake clock that advances only by the waits; elapsed time."""
    now = 0.0
    state = BucketState(burst, now)
    for _ in range(n):
        state, wait = take_token(state, now, rate=rate, burst=burst)
        now += wait
    return now


def test_token_bucket_paces_to_rate_after_burst() -> None:
    assert _drive(100.0, 1.0, 1_001) == pytest.approx(10.0)
    assert _drive(100.0, 50.0, 1_050) == pytest.approx(10.0)
    assert _drive(0.0, 1.0, 10_000) == 0.0  # unlimited
    # Idle time refills up to the burst, not beyond.
    state = BucketState(0.0, 0.0)
    state, wait = take_token(state, 100.0, rate=10.0, burst=5.0)
    assert wait == 0.0 and state.tokens == pytest.approx(4.0)
    for _ in range(4):
        state, wait = take_token(state, 100.0, rate=10.0, burst=5.0)
        assert wait == 0.0
    state, wait = take_token(state, 100.0, rate=10.0, burst=5.0)
    assert wait == pytest.approx(0.1)


def test_pause_for_sleeps_in_slices_the_bucket_can_bank() -> None:
    # A token due in 0.5 ms at 2,000/s: sleep the 5 ms slice (10 tokens bank in it).
    assert pause_for(0.0005, rate=2_000.0, burst=200.0, slice_s=0.005) == 0.005
    # A longer wait is slept whole; no wait, no sleep.
    assert pause_for(0.2, rate=5.0, burst=1.0, slice_s=0.005) == 0.2
    assert pause_for(0.0, rate=2_000.0, burst=200.0, slice_s=0.005) == 0.0
    # A burst of 1 banks nothing: sleeping past the token would lower the rate.
    assert pause_for(0.001, rate=1_000.0, burst=1.0, slice_s=0.005) == 0.001
    # A small burst caps the slice at what it can bank (3 tokens at 1,000/s: 3 ms).
    assert pause_for(0.001, rate=1_000.0, burst=4.0, slice_s=0.005) == pytest.approx(0.003)
    assert pause_for(0.5, rate=0.0, burst=1.0, slice_s=0.005) == 0.5


def test_time_shift_keeps_or_compresses_gaps() -> None:
    shift = TimeShift(source_start_ms=1_000, wall_start_ms=NOW_MS)
    assert shift.map(1_000) == NOW_MS
    assert shift.map(61_000) == NOW_MS + 60_000
    fast = TimeShift(1_000, NOW_MS, speed=60.0)
    assert fast.map(3_601_000) == NOW_MS + 60_000
    assert TimeShift(1_000, NOW_MS, speed=math.inf).map(9_999_999) == NOW_MS


# --- sender with a fake producer and fake clocks (no Kafka, no sleeping) -------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return NOW_MS + int(self.t * 1000)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


class FakeProducer:
    def __init__(self, fail_every: int = 0) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []
        self.pending: list[Any] = []
        self.fail_every = fail_every

    def produce(self, topic: str, *, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.messages.append((topic, key, value))
        failed = self.fail_every and len(self.messages) % self.fail_every == 0
        self.pending.append((on_delivery, "broker down" if failed else None))

    def poll(self, timeout: float) -> int:
        served = len(self.pending)
        for callback, err in self.pending:
            callback(err, None)
        self.pending.clear()
        return served

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def _sender(clock: FakeClock, producer: FakeProducer, **options: Any) -> TrafficSender:
    return TrafficSender(
        Settings(),
        producer=producer,
        clock=clock.monotonic,
        wall_clock_ms=clock.wall_ms,
        sleep=clock.sleep,
        **options,
    )


def test_sender_routes_by_topic_family_with_user_keys() -> None:
    clock, producer = FakeClock(), FakeProducer(fail_every=10)
    events = generate_events(500, seed=5)
    stats = _sender(clock, producer).send(events)
    settings = Settings()
    expected_topic = {
        "clickstream": settings.kafka.clickstream_topic,
        "purchase": settings.kafka.purchase_topic,
        "engagement": settings.kafka.engagement_topic,
    }
    assert stats.sent == 500 and len(producer.messages) == 500
    assert stats.errors == 50 and stats.delivered == 450 and stats.first_error == "broker down"
    for event, (topic, key, value) in zip(events, producer.messages, strict=True):
        assert topic == expected_topic[ev.topic_family(event["event_type"])]
        assert key == event["user_id"].encode()
        assert b" " not in value.split(b'"properties"')[0]  # compact separators
        assert json.loads(value) == event
    assert set(stats.per_topic) == set(expected_topic.values())
    assert stats.stopped_by == "exhausted"


def test_sender_rate_bounds_and_progress() -> None:
    clock, producer = FakeClock(), FakeProducer()
    reports: list[Any] = []
    stats = _sender(clock, producer, rate=200.0, max_events=1_000, progress=reports.append).send(
        generate_events(5_000, seed=5)
    )
    assert stats.sent == 1_000 and stats.stopped_by == "max_events"
    assert stats.elapsed_s == pytest.approx(1_000 / 200, rel=0.05)
    assert stats.rate == pytest.approx(200, rel=0.05)
    assert len(reports) >= 4 and reports[-1].sent == 1_000
    assert all(r.interval_rate == pytest.approx(200, rel=0.1) for r in reports[:-1])

    # Past the first burst it sleeps in 5 ms slices, not once per event, at the same rate.
    clock, producer = FakeClock(), FakeProducer()
    stats = _sender(clock, producer, rate=2_000.0, max_events=4_000).send(
        generate_events(5_000, seed=5)
    )
    assert stats.sent == 4_000
    assert stats.elapsed_s == pytest.approx((4_000 - 200) / 2_000, rel=0.01)  # after the burst
    assert len(clock.sleeps) <= (4_000 - 200) / 10 + 5
    assert min(clock.sleeps) == pytest.approx(0.005)

    clock, producer = FakeClock(), FakeProducer()
    stats = _sender(clock, producer, rate=100.0, burst=10.0, max_duration_s=2.0).send(
        generate_events(5_000, seed=5)
    )
    assert stats.stopped_by == "max_duration"
    assert 200 <= stats.sent <= 10 + 100 * 2  # burst + rate × duration


def test_sender_rewrites_times_to_now() -> None:
    source = [
        {"event_id": f"e{i}", "user_id": "u1", "event_type": "pv", "item_id": "i", "event_time": t}
        for i, t in enumerate([T0, T0 + 10_000, T0 + 70_000])
    ]
    clock, producer = FakeClock(), FakeProducer()
    stats = _sender(clock, producer, rewrite_time_to_now=True, speed=10.0).send(source)
    times = [json.loads(v)["event_time"] for _, _, v in producer.messages]
    assert times == [NOW_MS, NOW_MS + 1_000, NOW_MS + 7_000]
    assert clock.t == pytest.approx(7.0, abs=0.01)  # waited until each event was due
    assert stats.first_event_ms == NOW_MS
    for _, _, value in producer.messages:
        ev.validate_event(json.loads(value), now_ms=clock.wall_ms())

    clock, producer = FakeClock(), FakeProducer()
    _sender(clock, producer, rewrite_time_to_now=True, speed=math.inf, event_id_suffix="-r2").send(
        source
    )
    sent = [json.loads(v) for _, _, v in producer.messages]
    assert [e["event_time"] for e in sent] == [NOW_MS] * 3 and clock.t == 0.0
    assert [e["event_id"] for e in sent] == ["e0-r2", "e1-r2", "e2-r2"]
    assert source[0]["event_time"] == T0  # input not mutated


def test_sender_replays_taobao_sample_fast() -> None:
    path = _shared(replay.TAOBAO_SAMPLE)
    clock, producer = FakeClock(), FakeProducer()
    stats = _sender(clock, producer, rewrite_time_to_now=True, speed=600.0).send(
        replay.iter_events(path, limit=3_000)
    )
    assert stats.sent == 3_000
    first = json.loads(producer.messages[0][2])
    assert first["event_time"] == NOW_MS
    assert stats.last_event_ms is not None and stats.last_event_ms <= clock.wall_ms()
