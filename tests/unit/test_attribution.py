"""Exposure/outcome join and the A/B report aggregation (pure)."""

from __future__ import annotations

import json

from analysis import ab_report
from flink_jobs import attribution as at
from personalization.events import Event
from personalization.exposures import Exposure, parse_exposure

T0 = 1_700_000_000_000
WINDOW = 30 * 60_000


def exposure(rec: str = "r1", items=("a", "b"), t: int = T0) -> Exposure:
    return Exposure(rec, "u1", "exp", "hybrid", "hybrid_v1", tuple(items), t)


def outcome(kind: str, item: str, t: int, rec: str = "r1", price: float = 0.0) -> Event:
    return Event(
        f"{kind}-{item}-{t}", "u1", kind, t, item_id=item, price=price, properties={"rec_id": rec}
    )


def test_exposure_round_trip():
    e = exposure()
    assert parse_exposure(e.to_json()) == e
    assert parse_exposure("{}") is None and parse_exposure("nope") is None


def test_exposure_round_trip_with_features_and_non_finite_values():
    logged = ({"score": 0.25, "src_cf": 1.0}, {"score": -3.5e-07, "src_cf": 0.0})
    e = Exposure("r2", "u-é", "", "", "hybrid_v2", ("a", "b"), T0, ("x", "y"), logged)
    raw = e.to_json()
    assert parse_exposure(raw) == e
    assert json.loads(raw) == {
        "rec_id": "r2",
        "user_id": "u-é",
        "experiment": "",
        "variant": "",
        "strategy": "hybrid_v2",
        "items": ["a", "b"],
        "time_ms": T0,
        "categories": ["x", "y"],
        "features": [{"score": 0.25, "src_cf": 1.0}, {"score": -3.5e-07, "src_cf": 0.0}],
    }
    # A non-finite feature is kept as the json module writes it, not turned into null.
    odd = Exposure("r3", "u", "", "", "s", ("a",), T0, ("x",), ({"score": float("inf")},))
    assert parse_exposure(odd.to_json()) == odd
    nan = parse_exposure(
        Exposure("r4", "u", "", "", "s", ("a",), T0, ("x",), ({"s": float("nan")},)).to_json()
    )
    assert nan is not None and nan.features[0]["s"] != nan.features[0]["s"]
    # A string that merely holds "null" takes the slower writer and the same record.
    named = Exposure("r5", "null-user", "", "", "s", ("a",), T0)
    assert parse_exposure(named.to_json()) == named


def test_outcomes_count_only_shown_items_inside_the_window():
    state = at.Attribution("r1")
    at.add_exposure(state, exposure(), WINDOW)
    at.add_outcome(state, outcome("click", "a", T0 + 1000), WINDOW)
    at.add_outcome(state, outcome("click", "zzz", T0 + 1000), WINDOW)  # not shown
    at.add_outcome(state, outcome("purchase", "b", T0 + 2000, price=9.5), WINDOW)
    at.add_outcome(state, outcome("purchase", "a", T0 + WINDOW + 1, price=100), WINDOW)  # late
    record = json.loads(state.to_json())
    assert record["clicked"] and record["purchased"] and not record["carted"]
    assert record["revenue"] == 9.5
    assert at.close_time(state, WINDOW, 60_000) == T0 + WINDOW + 1


def test_outcome_before_exposure_waits_for_it():
    state = at.Attribution("r1")
    at.add_outcome(state, outcome("add_to_cart", "a", T0 + 500), WINDOW)
    assert at.close_time(state, WINDOW, 60_000) == T0 + 500 + 60_000
    at.add_exposure(state, exposure(), WINDOW)
    assert json.loads(state.to_json())["carted"]


def test_events_without_rec_id_are_not_outcomes():
    plain = Event("e", "u1", "click", T0, item_id="a")
    assert at.outcome_of(plain) is None


def test_report_totals_and_control():
    records = [
        {
            "experiment": "x",
            "variant": "control",
            "user_id": "u1",
            "clicked": True,
            "purchased": False,
            "revenue": 0.0,
        },
        {
            "experiment": "x",
            "variant": "control",
            "user_id": "u1",
            "clicked": False,
            "purchased": True,
            "revenue": 10.0,
        },
        {
            "experiment": "x",
            "variant": "hybrid",
            "user_id": "u2",
            "clicked": True,
            "purchased": True,
            "revenue": 5.0,
        },
        {"experiment": "", "variant": "", "user_id": "u3"},
    ]
    totals = ab_report.totals_by_variant(records)
    control = totals["x"]["control"]
    assert (control.users, control.impressions, control.clicks, control.conversions) == (1, 2, 1, 1)
    assert control.revenue == 10.0 and control.revenue_sq == 100.0
    reports = ab_report.report(totals["x"])
    assert reports["control"].comparisons == []
    assert [c.metric for c in reports["hybrid"].comparisons] == ["ctr", "conversion"]
    text = ab_report.format_report("x", reports)
    assert "hybrid vs control" in text
