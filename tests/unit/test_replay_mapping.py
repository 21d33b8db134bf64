"""Replay as users need it: the generic CSV reader (column and value mapping, time
formats, bad rows), replay pacing and time shifting, the admission-window check and
the ``personalize send`` options that drive them. Pure logic: no Kafka."""

from __future__ import annotations

import csv
import gzip
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from ops import cli
from personalization import events as ev
from personalization.settings import Settings
from traffic import replay
from traffic.sender import AdmissionCheck, TimeShift, TrafficSender, admission_verdict

NOW_MS = int(time.time() * 1000)
T0 = 1_700_000_000_000

SHOP_HEADER = "ts;uid;action;sku;cat;amount;country;stars\n"


def _mapping(**options: str) -> replay.CsvMapping:
    return replay.CsvMapping.parse(
        options.pop(
            "fields",
            "event_time=ts,user_id=uid,event_type=action,item_id=sku,category=cat,"
            "price=amount,country=country,properties.rating=stars",
        ),
        **options,
    )


def _read(
    path: Path, mapping: replay.CsvMapping, **kw: Any
) -> tuple[list[dict[str, Any]], replay.BadRows]:
    bad = replay.BadRows()
    events = list(
        replay.iter_events(path, reader=replay.MappedCsvReader(mapping), bad_rows=bad, **kw)
    )
    return events, bad


# --- the mapping -----------------------------------------------------------------------


def test_mapping_parse_validates_fields_types_and_formats() -> None:
    m = replay.CsvMapping.parse(
        "event_time=ts, user_id=uid,event_type=action,properties.size=sz",
        event_types="pv=product_view,Buy=buy,search=-",
        time_format="%d/%m/%Y %H:%M",
        columns="ts,uid,action,sz",
        delimiter="\\t",
    )
    assert m.fields == {
        "event_time": "ts",
        "user_id": "uid",
        "event_type": "action",
        "properties.size": "sz",
    }
    # Targets are normalized to canonical names; "-" skips.
    assert m.event_types == {"pv": ev.PRODUCT_VIEW, "Buy": ev.PURCHASE, "search": replay.SKIP}
    assert m.columns == ("ts", "uid", "action", "sz") and m.delimiter == "\t"

    with pytest.raises(ValueError, match="event_time must be mapped"):
        replay.CsvMapping.parse("user_id=u,event_type=t")
    with pytest.raises(ValueError, match="unknown field 'sku'"):
        replay.CsvMapping.parse("event_time=t,user_id=u,event_type=e,sku=s")
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        replay.CsvMapping.parse("event_time=t,user_id,event_type=e")
    with pytest.raises(ValueError, match="'user_id' given twice"):
        replay.CsvMapping.parse("event_time=t,user_id=a,user_id=b,event_type=e")
    with pytest.raises(ValueError, match=r"buy=checkout: 'checkout' is not an event type"):
        _mapping(event_types="buy=checkout")
    with pytest.raises(ValueError, match="--time-format"):
        _mapping(time_format="days")
    with pytest.raises(ValueError, match="--delimiter"):
        _mapping(delimiter=";;")


def test_time_formats_detected_and_explicit() -> None:
    assert replay.detect_time_format("1511658000") == "s"
    assert replay.detect_time_format("1511658000.5") == "s"
    assert replay.detect_time_format("1511658000123") == "ms"
    assert replay.detect_time_format("2017-11-26T01:00:00Z") == "iso"
    assert replay.parse_time_ms("1511658000", "s") == 1_511_658_000_000
    assert replay.parse_time_ms("1511658000.25", "s") == 1_511_658_000_250
    assert replay.parse_time_ms("1511658000123", "ms") == 1_511_658_000_123
    # ISO 8601: Z, an offset, and no zone at all (read as UTC).
    assert replay.parse_time_ms("2017-11-26T01:00:00Z", "iso") == 1_511_658_000_000
    assert replay.parse_time_ms("2017-11-26T02:00:00+01:00", "iso") == 1_511_658_000_000
    assert replay.parse_time_ms("2017-11-26 01:00:00", "iso") == 1_511_658_000_000
    assert replay.parse_time_ms("26/11/2017 01:00", "%d/%m/%Y %H:%M") == 1_511_658_000_000
    for value, fmt in (("", "s"), ("abc", "s"), ("-5", "ms"), ("26.11.2017", "iso")):
        with pytest.raises(ValueError):
            replay.parse_time_ms(value, fmt)


# --- the reader ------------------------------------------------------------------------


def test_mapped_csv_reads_a_shop_export(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        SHOP_HEADER
        + "2024-05-01T10:00:00Z;c1;view;A-1;Shoes;;de;\n"
        + "2024-05-01T10:00:07Z;c1;basket;A-1;Shoes;59.90;de;\n"
        + "2024-05-01T10:01:00Z;c2;order;B-2;Bags;120;fr;\n"
        + "2024-05-01T10:02:00Z;c2;review;B-2;Bags;;fr;4\n"
    )
    mapping = _mapping(
        event_types="view=product_view,basket=add_to_cart,order=purchase,review=rating"
    )
    events, bad = _read(path, mapping)
    assert bad.count == 0 and not bad.skipped
    assert events[0] == {
        "event_id": "orders-2",  # <file stem>-<line>: the header is line 1
        "user_id": "c1",
        "event_type": ev.PRODUCT_VIEW,
        "event_time": 1_714_557_600_000,
        "item_id": "A-1",
        "category": "shoes",
        "context": {"country": "DE"},
    }
    assert events[1]["event_type"] == ev.ADD_TO_CART and events[1]["price"] == 59.9
    assert events[1]["event_time"] - events[0]["event_time"] == 7_000
    assert events[2]["event_type"] == ev.PURCHASE and events[2]["price"] == 120.0
    assert events[3]["event_type"] == ev.RATING and events[3]["properties"] == {"rating": "4"}
    for event in events:  # what the job will accept
        ev.validate_event(event, now_ms=event["event_time"])
    # An event_id column wins over the line-derived id.
    with_ids = tmp_path / "ids.csv"
    with_ids.write_text("id,t,u,e,i\nX-9,1714557600000,u1,pv,i1\n")
    events, bad = _read(
        with_ids,
        replay.CsvMapping.parse("event_id=id,event_time=t,user_id=u,event_type=e,item_id=i"),
    )
    assert bad.count == 0
    assert [(e["event_id"], e["event_time"], e["event_type"]) for e in events] == [
        ("X-9", 1_714_557_600_000, ev.PRODUCT_VIEW)
    ]


def test_headerless_gzip_with_columns_and_auto_ms(tmp_path: Path) -> None:
    path = tmp_path / "export.tsv.gz"
    rows = ["u1\t1700000000000\tclick\tsku1", "u1\t1700000000500\tclick\tsku2"]
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    mapping = replay.CsvMapping.parse(
        "user_id=who,event_time=when,event_type=what,item_id=sku", columns="who,when,what,sku"
    )
    events, bad = _read(path, mapping)
    assert bad.count == 0
    assert [e["event_time"] for e in events] == [1_700_000_000_000, 1_700_000_000_500]
    assert [e["event_id"] for e in events] == ["export-1", "export-2"]  # no header line


def test_bad_rows_are_counted_with_line_and_reason_and_the_replay_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "messy.csv"
    lines = [
        "ts,uid,action,sku",  # 1
        "1714557600,u1,pv,i1",  # 2 ok (epoch s decided here for the file)
        "1714557601,u1,pv",  # 3 short row
        "1714557602,,pv,i1",  # 4 no user
        "1714557603,u1,teleport,i1",  # 5 unknown type
        "yesterday,u1,pv,i1",  # 6 bad time
        "1714557605,u1,buy,",  # 7 purchase without item
        "1714557606,u2,search,",  # 8 skipped on purpose
        "",  # 9 blank: ignored
        "1714557608,u2,cart,i2",  # 10 ok
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"1714557609,u\xff3,pv,i3\n")
    mapping = replay.CsvMapping.parse(
        "event_time=ts,user_id=uid,event_type=action,item_id=sku", event_types="search=-"
    )
    events, bad = _read(path, mapping)
    assert [(e["user_id"], e["event_type"]) for e in events] == [
        ("u1", ev.PRODUCT_VIEW),
        ("u2", ev.ADD_TO_CART),
        ("u\ufffd3", ev.PRODUCT_VIEW),  # not UTF-8: replaced, not a crash
    ]
    assert bad.count == 5
    assert [line for line, _ in bad.examples] == [3, 4, 5, 6, 7]
    reasons = [why.split(":")[0] for _, why in bad.examples]
    assert reasons == [
        "missing_column",
        "missing_user_id",
        "unknown_event_type",
        "invalid_event_time",
        "missing_item_id",
    ]
    assert bad.skipped == {"search": 1}
    summary = bad.summary()
    assert summary.startswith("5 bad rows (") and "line 6: invalid_event_time" in summary
    # The CLI's sorted replay sees the same events.
    assert len(list(replay.iter_events(path, reader=replay.MappedCsvReader(mapping)))) == 3


def test_csv_errors_and_the_kept_examples_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    # Fields beyond the csv module's size limit (a runaway quote, a blob column).
    huge = "x" * (csv.field_size_limit() + 1)
    body = "t,u,e\n" + "".join(f"{1714557600 + i},{huge},pv\n" for i in range(30))
    path.write_text(body + "1714557700,u,page_view\n")
    bad = replay.BadRows(keep=3)
    events = list(
        replay.MappedCsvReader(replay.CsvMapping.parse("event_time=t,user_id=u,event_type=e")).read(
            path, bad
        )
    )
    assert [e["event_type"] for e in events] == [ev.PAGE_VIEW]
    assert bad.count == 30 and len(bad.examples) == 3
    assert set(bad.by_reason) == {"csv_error"} and bad.examples[0][0] == 2


def test_mapped_column_missing_from_header_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("time,user,type\n1,u,pv\n")
    with pytest.raises(ValueError, match=r"'uid'.*not in the header \['time', 'user', 'type'\]"):
        _read(path, replay.CsvMapping.parse("event_time=time,user_id=uid,event_type=type"))


def test_generic_reader_on_taobao_raw_format_matches_the_builtin_reader() -> None:
    """The README's --map form for the shared Taobao sample: the same events as the
    built-in reader (ids aside)."""
    path = replay.dataset_path(replay.TAOBAO_SAMPLE, Settings())
    if not path.exists():
        pytest.skip(f"shared dataset {path} not available")
    mapping = replay.CsvMapping.parse(
        "user_id=user,item_id=item,category=category,event_type=behavior,event_time=timestamp",
        event_types="pv=product_view,cart=add_to_cart,fav=favorite,buy=purchase",
        columns="user,item,category,behavior,timestamp",
    )
    mapped, bad = _read(path, mapping, limit=20_000)
    builtin = list(replay.iter_events(path, limit=20_000))
    assert bad.count == 0 and len(mapped) == 20_000
    without_id = [{k: v for k, v in e.items() if k != "event_id"} for e in builtin]
    assert [{k: v for k, v in e.items() if k != "event_id"} for e in mapped] == without_id
    assert len({e["event_id"] for e in mapped}) == len(mapped)


def test_builtin_readers_report_bad_lines_to_the_sink(tmp_path: Path) -> None:
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_text("1,100,7,pv,1511658010\nbad,line\n2,200,8,zap,1511658005\n")
    bad = replay.BadRows()
    assert len(list(replay.iter_events(taobao, bad_rows=bad))) == 1
    assert [line for line, _ in bad.examples] == [2, 3]
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"event_type": "pv"}\nnot json\n[1]\n')
    bad = replay.BadRows()
    assert len(list(replay.iter_events(jsonl, bad_rows=bad))) == 1
    assert [line for line, _ in bad.examples] == [2, 3] and bad.by_reason == {"invalid_json": 2}


# --- pacing and time shifting ----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sent_at: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return NOW_MS + int(self.t * 1000)

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)


class RecordingProducer:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, dict[str, Any]]] = []

    def produce(self, topic: str, *, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.sent.append((self.clock.t, json.loads(value)))
        on_delivery(None, None)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def _source(offsets_s: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{i}",
            "user_id": "u",
            "event_type": "page_view",
            "event_time": T0 + round(o * 1000),
        }
        for i, o in enumerate(offsets_s)
    ]


def _send(events: list[dict[str, Any]], **options: Any) -> list[tuple[float, dict[str, Any]]]:
    clock = FakeClock()
    producer = RecordingProducer(clock)
    TrafficSender(
        Settings(),
        producer=producer,
        clock=clock.monotonic,
        wall_clock_ms=clock.wall_ms,
        sleep=clock.sleep,
        **options,
    ).send(events)
    return producer.sent


def test_finite_speed_shifts_the_first_event_to_now_and_divides_the_gaps() -> None:
    offsets = [0.0, 2.0, 2.0, 5.0, 30.0]
    sent = _send(_source(offsets), rewrite_time_to_now=True, speed=4.0)
    times = [e["event_time"] for _, e in sent]
    assert times == [NOW_MS + round(o * 1000 / 4) for o in offsets]
    # The schedule: each send when its shifted time is due, not before.
    assert [t for t, _ in sent] == pytest.approx([o / 4 for o in offsets], abs=0.001)
    # Real time (speed 1) keeps the gaps as they are.
    sent = _send(_source([0.0, 1.5]), rewrite_time_to_now=True, speed=1.0)
    assert sent[1][1]["event_time"] - sent[0][1]["event_time"] == 1_500
    assert sent[1][0] == pytest.approx(1.5, abs=0.001)


def test_speed_max_collapses_and_keep_times_keeps_the_source_times() -> None:
    offsets = [0.0, 60.0, 3600.0]
    collapsed = _send(_source(offsets), rewrite_time_to_now=True, speed=math.inf)
    assert [t for t, _ in collapsed] == [0.0, 0.0, 0.0]
    assert [e["event_time"] for _, e in collapsed] == [NOW_MS] * 3
    # Backfill as fast as the rate allows, own times untouched.
    kept = _send(_source(offsets), keep_times=True, speed=math.inf)
    assert [e["event_time"] for _, e in kept] == [T0 + round(o * 1000) for o in offsets]
    assert [t for t, _ in kept] == [0.0, 0.0, 0.0]
    # Backfill paced by the gaps: own times, sends spread over gaps / speed.
    paced = _send(_source(offsets), keep_times=True, speed=60.0)
    assert [e["event_time"] for _, e in paced] == [T0 + round(o * 1000) for o in offsets]
    assert [t for t, _ in paced] == pytest.approx([0.0, 1.0, 60.0], abs=0.001)
    with pytest.raises(ValueError, match="exclude each other"):
        TrafficSender(Settings(), rewrite_time_to_now=True, keep_times=True)


def test_time_shift_with_out_of_order_events_sends_late_ones_at_once() -> None:
    sent = _send(_source([0.0, 10.0, 4.0]), rewrite_time_to_now=True, speed=2.0)
    assert [e["event_time"] - NOW_MS for _, e in sent] == [0, 5_000, 2_000]
    assert [t for t, _ in sent] == pytest.approx([0.0, 5.0, 5.0], abs=0.001)
    assert TimeShift(T0, NOW_MS, speed=2.0).map(T0 + 10_000) == NOW_MS + 5_000


# --- admission window ------------------------------------------------------------------


def test_admission_verdict_and_check_warn_once() -> None:
    limits = ev.ValidationLimits(max_event_age_ms=3_600_000, max_future_skew_ms=60_000)
    assert admission_verdict(NOW_MS - 3_600_001, NOW_MS, limits) == "event_time_too_old"
    assert admission_verdict(NOW_MS - 3_600_000, NOW_MS, limits) is None
    assert admission_verdict(NOW_MS + 60_001, NOW_MS, limits) == "event_time_in_future"
    # The same rule as the job's validation.
    with pytest.raises(ev.EventRejected, match="too old"):
        ev.validate_event(
            {"user_id": "u", "event_type": "page_view", "event_time": NOW_MS - 3_600_001},
            now_ms=NOW_MS,
            limits=limits,
        )
    warnings: list[str] = []
    check = AdmissionCheck(limits, warn=warnings.append, wall_clock_ms=lambda: NOW_MS)
    events = [
        {"event_id": "old1", "event_time": NOW_MS - 7_200_000},
        {"event_id": "old2", "event_time": NOW_MS - 7_000_000},
        {"event_id": "ok", "event_time": NOW_MS - 1_000},
        {"event_id": "ahead", "event_time": NOW_MS + 120_000},
        {"event_id": "no-time"},
    ]
    assert list(check.watch(events)) == events  # passes everything through
    assert check.refused == {"event_time_too_old": 2, "event_time_in_future": 1}
    assert check.checked == 4
    assert len(warnings) == 1 and "old1" in warnings[0] and "max age 3600 s" in warnings[0]


# --- personalize send options ----------------------------------------------------------


def test_cli_speed_and_mapping_options() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["send", "--file", "f.csv"])
    assert args.speed == math.inf and args.rate is None and not args.keep_times
    assert cli.send_reader(args) is None
    args = parser.parse_args(
        [
            "send",
            "--file",
            "f.csv",
            "--speed",
            "2.5",
            "--map",
            "event_time=ts,user_id=uid,event_type=action",
            "--event-types",
            "x=purchase",
            "--time-format",
            "ms",
        ]
    )
    assert args.speed == 2.5
    reader = cli.send_reader(args)
    assert isinstance(reader, replay.MappedCsvReader)
    assert reader.mapping.event_types == {"x": ev.PURCHASE} and reader.mapping.time_format == "ms"
    assert parser.parse_args(["send", "--speed", "max"]).speed == math.inf
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["send", "--speed", bad])
    with pytest.raises(SystemExit, match="need --map"):
        cli.send_reader(parser.parse_args(["send", "--file", "f", "--event-types", "a=pv"]))
    with pytest.raises(SystemExit, match="event_type must be mapped"):
        cli.send_reader(
            parser.parse_args(["send", "--file", "f", "--map", "event_time=a,user_id=b"])
        )
    # `up` keeps its options (its traffic is today's collapse at --rate).
    up = parser.parse_args(["up", "--file", "f.csv"])
    assert up.rate == 200.0 and not hasattr(up, "speed")
