"""The trigger rule file: its loader (every error names rule and field) and each rule
kind inside the real per-user state machine (fires, does not fire, cooldown), rule
state across pickling and across a rule-file change (pure, no services)."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from flink_jobs import profile, triggers
from personalization.events import Event
from personalization.settings import FeatureSettings, TriggerSettings
from personalization.trigger_rules import (
    AbsenceRule,
    CountRule,
    RuleFileError,
    SequenceRule,
    ThresholdRule,
    load_rule_file,
    parse_rules,
)
from personalization.triggers import Trigger

T0 = 1_700_000_000_000
MIN = 60_000


# --- loader ---------------------------------------------------------------------------


def test_the_default_file_holds_todays_three_rules() -> None:
    rules = load_rule_file(FeatureSettings().triggers.rules_path)
    assert tuple(r.name for r in rules) == triggers.TRIGGER_NAMES
    browse, cart, bounce = rules
    assert isinstance(browse, CountRule)
    assert (browse.at_least, browse.within_ms, browse.cooldown_ms) == (3, 10 * MIN, 10 * MIN)
    assert browse.step.events == {"product_view"}
    assert isinstance(cart, AbsenceRule) and (cart.of, cart.within_ms) == ("cart", 30 * MIN)
    assert isinstance(bounce, AbsenceRule) and bounce.of == "session"
    assert (bounce.max_events, bounce.max_duration_ms, bounce.converted) == (2, 10_000, False)


VALID = """
version: 1
rules:
  - name: shoe_browser
    kind: count
    events: [pv, product_view]
    at_least: 2
    within: 90s
    cooldown: 1h
    where: {categories: [shoes], min_price: 10, max_price: 200.5, pages: ["/p/"]}
  - name: idle
    kind: absence
    of: activity
    within: 15m
  - name: checkout_no_purchase
    kind: sequence
    first: {events: [page_view], where: {pages: ["/checkout"]}}
    then: {events: [buy]}
    within: 30m
    negate: true
  - name: long_look
    kind: threshold
    events: [dwell]
    field: properties.dwell_ms
    at_least: 60000
  - name: milestones
    kind: threshold
    feature: purchase_count
    milestones: [1, 5, 10]
  - name: switched_off
    kind: count
    events: [click]
    at_least: 1
    within: 1m
    enabled: false
"""


def test_a_valid_file_parses_every_kind() -> None:
    rules = parse_rules(VALID)
    assert [r.name for r in rules] == [
        "shoe_browser",
        "idle",
        "checkout_no_purchase",
        "long_look",
        "milestones",
    ]  # the disabled rule is left out
    count, idle, seq, look, miles = rules
    assert isinstance(count, CountRule)
    assert count.step.events == {"product_view"}  # aliases normalised
    assert count.within_ms == 90_000 and count.cooldown_ms == 3_600_000
    assert count.step.where.categories == {"shoes"} and count.step.where.max_price == 200.5
    assert isinstance(idle, AbsenceRule) and idle.within_ms == 15 * MIN
    assert isinstance(seq, SequenceRule) and seq.negate and seq.then.events == {"purchase"}
    assert seq.first.where.pages == ("/checkout",)
    assert isinstance(look, ThresholdRule) and look.field == "properties.dwell_ms"
    assert isinstance(miles, ThresholdRule) and miles.milestones == (1.0, 5.0, 10.0)


def test_a_file_on_disk_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(VALID)
    assert load_rule_file(path) == parse_rules(VALID)


def rule(body: str) -> str:
    return "rules:\n" + textwrap.indent(textwrap.dedent(body), "  ")


@pytest.mark.parametrize(
    ("text", "rule_name", "field", "says"),
    [
        (
            rule("- {name: r1, kind: count, events: [product_view], at_least: 3}"),
            "r1",
            "within",
            "required",
        ),
        (
            rule("- {name: r1, kind: count, events: [teleport], at_least: 3, within: 1m}"),
            "r1",
            "events",
            "unknown event type",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 0, within: 1m}"),
            "r1",
            "at_least",
            ">= 1",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 99, within: 1m}"),
            "r1",
            "at_least",
            "at most",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 3, within: soon}"),
            "r1",
            "within",
            "duration",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 3, within: 0s}"),
            "r1",
            "within",
            "longer than 0",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 3, within: 1m, colour: red}"),
            "r1",
            "colour",
            "unknown field",
        ),
        (
            rule(
                "- {name: r1, kind: count, events: [pv], at_least: 3, within: 1m,"
                " where: {min_price: 9, max_price: 1}}"
            ),
            "r1",
            "where.min_price",
            "above max_price",
        ),
        (
            rule(
                "- {name: r1, kind: count, events: [pv], at_least: 3, within: 1m,"
                " where: {brand: x}}"
            ),
            "r1",
            "where.brand",
            "unknown field",
        ),
        (
            rule("- {name: r1, kind: count, events: [pv], at_least: 3, within: 1m, cooldown: -5}"),
            "r1",
            "cooldown",
            "negative",
        ),
        (rule("- {name: r1, kind: magic}"), "r1", "kind", "expected one of"),
        (rule("- {name: r1}"), "r1", "kind", "required"),
        (
            rule("- {name: r1, kind: absence, of: wallet, within: 1m}"),
            "r1",
            "of",
            "expected one of",
        ),
        (rule("- {name: r1, kind: absence, of: cart}"), "r1", "within", "required"),
        (
            rule("- {name: r1, kind: absence, of: session, within: 1m}"),
            "r1",
            "within",
            "unknown field",
        ),
        (
            rule("- {name: r1, kind: absence, of: session, converted: maybe}"),
            "r1",
            "converted",
            "true or false",
        ),
        (
            rule("- {name: r1, kind: sequence, first: {events: [pv]}, within: 1m}"),
            "r1",
            "then",
            "required",
        ),
        (
            rule(
                "- {name: r1, kind: sequence, first: {events: [pv]},"
                " then: {events: [nope]}, within: 1m}"
            ),
            "r1",
            "then.events",
            "unknown event type",
        ),
        (
            rule(
                "- {name: r1, kind: sequence, first: {events: [pv], when: x},"
                " then: {events: [buy]}, within: 1m}"
            ),
            "r1",
            "first.when",
            "unknown field",
        ),
        (
            rule("- {name: r1, kind: threshold, feature: karma, at_least: 1}"),
            "r1",
            "feature",
            "expected one of",
        ),
        (
            rule("- {name: r1, kind: threshold, feature: monetary, milestones: [5, 1]}"),
            "r1",
            "milestones",
            "increasing",
        ),
        (
            rule("- {name: r1, kind: threshold, feature: monetary}"),
            "r1",
            "milestones",
            "exactly one",
        ),
        (
            rule("- {name: r1, kind: threshold, events: [dwell], field: colour, at_least: 1}"),
            "r1",
            "field",
            "properties.NAME",
        ),
        (
            rule("- {name: r1, kind: threshold, events: [dwell], field: price, at_least: high}"),
            "r1",
            "at_least",
            "number",
        ),
        (rule("- {name: Bad-Name, kind: count}"), "#1", "name", "expected"),
        ("rules: {}", "<file>", "rules", "expected a list"),
        ("rules: []\nextra: 1", "<file>", "extra", "unknown field"),
        ("rules: [", "<file>", "<yaml>", ""),
    ],
)
def test_each_error_names_the_rule_and_the_field(
    text: str, rule_name: str, field: str, says: str
) -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, "rules.yaml")
    (error,) = caught.value.errors
    assert (error.rule, error.field) == (rule_name, field), error
    assert says in error.message
    assert f"rule {rule_name!r}, field {field!r}" in str(caught.value)
    assert str(caught.value).startswith("rules.yaml:")


def test_every_wrong_rule_is_reported_at_once() -> None:
    text = rule(
        """
        - {name: a, kind: count, events: [pv], at_least: 3}
        - {name: b, kind: absence, of: cart, within: 30m}
        - {name: a, kind: absence, of: cart, within: 30m}
        - {name: c, kind: threshold, feature: nope, at_least: 1}
        """
    )
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text)
    assert [(e.rule, e.field) for e in caught.value.errors] == [
        ("a", "within"),
        ("a", "name"),
        ("c", "feature"),
    ]


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"nothere\.yaml"):
        load_rule_file(tmp_path / "nothere.yaml")


def test_the_fingerprint_follows_the_definition_not_the_name_or_switch() -> None:
    base = "- {name: r, kind: absence, of: cart, within: 30m}"
    (a,) = parse_rules(rule(base))
    (b,) = parse_rules(rule("- {name: r, kind: absence, of: cart, within: 30m, enabled: true}"))
    (c,) = parse_rules(rule("- {name: r, kind: absence, of: cart, within: 20m}"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_the_job_embeds_the_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(VALID)
    cfg = FeatureSettings(triggers=TriggerSettings(rules_file=str(path)))
    shipped = triggers.with_rules_loaded(cfg)
    assert shipped.triggers.rules_yaml == VALID
    path.write_text("rules: [")  # a later edit does not reach a running job
    assert triggers.TriggerRules(shipped).rules[0].name == "shoe_browser"
    bad = FeatureSettings(triggers=TriggerSettings(rules_file=str(path)))
    with pytest.raises(RuleFileError):
        triggers.with_rules_loaded(bad)


# --- kinds in the per-user state machine ------------------------------------------------


def settings(body: str) -> FeatureSettings:
    return FeatureSettings(triggers=TriggerSettings(rules_yaml=rule(body)))


def ev(kind: str, t: int, n: int, item: str = "i1", **kw: object) -> Event:
    return Event(
        event_id=f"e{n}",
        user_id="u1",
        event_type=kind,
        event_time_ms=t,
        item_id=item,
        category=str(kw.pop("category", "shoes")),
        **kw,  # type: ignore[arg-type]
    )


def run(
    cfg: FeatureSettings, events: list[Event], until: int | None = None
) -> tuple[profile.UserState, list[Trigger]]:
    state = profile.new_state("u1")
    fired: list[Trigger] = []
    for event in events:
        fired += profile.apply_event(state, event, cfg).triggers
    if until is not None:
        fired += profile.advance_time(state, until, cfg)
    return state, fired


COUNT = settings(
    """
    - name: cheap_shoes
      kind: count
      events: [product_view]
      at_least: 3
      within: 10m
      cooldown: 30m
      where: {categories: [shoes], max_price: 50}
    """
)


def test_count_fires_on_the_nth_matching_event_with_its_evidence() -> None:
    events = [ev("product_view", T0 + i * MIN, i, item=f"s{i}", price=20.0) for i in range(3)]
    _, fired = run(COUNT, events)
    assert [(t.trigger, t.time_ms, t.kind) for t in fired] == [
        ("cheap_shoes", T0 + 2 * MIN, "count")
    ]
    assert fired[0].evidence == {
        "count": 3,
        "window_s": 600,
        "items": ["s0", "s1", "s2"],
        "categories": ["shoes"],
        "event_ids": ["e0", "e1", "e2"],
    }


@pytest.mark.parametrize(
    "events",
    [
        # too slow: the views do not fit in 10 minutes
        [ev("product_view", T0 + i * 6 * MIN, i, price=20.0) for i in range(3)],
        # filtered out: too dear, another category, another type
        [ev("product_view", T0 + i * MIN, i, price=80.0) for i in range(3)],
        [ev("product_view", T0 + i * MIN, i, price=20.0, category="hats") for i in range(3)],
        [ev("click", T0 + i * MIN, i, price=20.0) for i in range(3)],
    ],
)
def test_count_does_not_fire_outside_its_window_or_filter(events: list[Event]) -> None:
    assert run(COUNT, events)[1] == []


def test_count_cooldown_holds_it_back_then_lets_it_fire_again() -> None:
    views = [ev("product_view", T0 + i * MIN, i, price=20.0) for i in range(40)]
    _, fired = run(COUNT, views)
    assert [t.time_ms for t in fired] == [T0 + 2 * MIN, T0 + 32 * MIN]


CART = settings("- {name: cart_left, kind: absence, of: cart, within: 20m, cooldown: 2h}")


def test_absence_of_cart_fires_once_per_burst_from_the_timer() -> None:
    state, fired = run(CART, [ev("add_to_cart", T0, 1, item="a")])
    assert fired == [] and T0 + 20 * MIN in profile.due_timers(state, CART)
    assert profile.advance_time(state, T0 + 20 * MIN - 1, CART) == []
    (record,) = profile.advance_time(state, T0 + 20 * MIN, CART)
    assert (record.trigger, record.time_ms, record.evidence["items"]) == (
        "cart_left",
        T0 + 20 * MIN,
        ["a"],
    )
    assert profile.advance_time(state, T0 + 60 * MIN, CART) == []
    assert T0 + 20 * MIN not in profile.due_timers(state, CART)


def test_absence_of_cart_does_not_fire_after_a_purchase() -> None:
    events = [ev("add_to_cart", T0, 1, item="a"), ev("purchase", T0 + MIN, 2, item="a")]
    assert run(CART, events, until=T0 + 5 * 3_600_000)[1] == []


def test_absence_of_cart_cooldown() -> None:
    # Two bursts 30 min apart: the second is within the 2 h cooldown of the first.
    events = [ev("add_to_cart", T0, 1, item="a"), ev("add_to_cart", T0 + 30 * MIN, 2, item="b")]
    _, fired = run(CART, events, until=T0 + 3 * 3_600_000)
    assert [t.time_ms for t in fired] == [T0 + 20 * MIN]
    events.append(ev("add_to_cart", T0 + 3 * 3_600_000, 3, item="c"))
    _, fired = run(CART, events, until=T0 + 5 * 3_600_000)
    assert [t.time_ms for t in fired] == [T0 + 20 * MIN, T0 + 3 * 3_600_000 + 20 * MIN]


IDLE = settings("- {name: idle, kind: absence, of: activity, within: 15m}")


def test_absence_of_activity_fires_when_the_user_went_quiet() -> None:
    state, fired = run(IDLE, [ev("page_view", T0, 1), ev("page_view", T0 + 10 * MIN, 2)])
    assert fired == []
    (record,) = profile.advance_time(state, T0 + 25 * MIN, IDLE)
    assert record.time_ms == T0 + 25 * MIN and record.evidence["last_event"] == T0 + 10 * MIN
    assert profile.advance_time(state, T0 + 90 * MIN, IDLE) == []  # once per quiet spell
    # Activity that never pauses for 15 minutes never fires.
    busy = [ev("page_view", T0 + i * 10 * MIN, i) for i in range(6)]
    assert run(IDLE, busy)[1] == []


BOUNCE = settings("- {name: bounce, kind: absence, of: session, max_events: 1, converted: false}")


def test_absence_of_session_fires_on_a_matching_session_end() -> None:
    gap = FeatureSettings().session_gap_s * 1000
    _, fired = run(BOUNCE, [ev("page_view", T0, 1)], until=T0 + gap + 1)
    assert [(t.trigger, t.time_ms) for t in fired] == [("bounce", T0 + gap)]
    two = [ev("page_view", T0, 1), ev("page_view", T0 + 1000, 2)]
    assert run(BOUNCE, two, until=T0 + 3 * gap)[1] == []


CHECKOUT = settings(
    """
    - name: checkout_no_purchase
      kind: sequence
      first: {events: [page_view], where: {pages: [/checkout]}}
      then: {events: [purchase]}
      within: 30m
      negate: true
      cooldown: 1d
    """
)


def checkout(t: int, n: int) -> Event:
    return ev("page_view", t, n, item="", page="/checkout/step1")


def test_sequence_negated_fires_when_the_second_step_never_came() -> None:
    state, fired = run(CHECKOUT, [checkout(T0, 1), ev("page_view", T0 + MIN, 2, page="/home")])
    assert fired == [] and T0 + 30 * MIN in profile.due_timers(state, CHECKOUT)
    (record,) = profile.advance_time(state, T0 + 30 * MIN, CHECKOUT)
    assert record.evidence["first_event"] == "e1" and record.evidence["missing"] == ["purchase"]
    assert record.kind == "sequence"


def test_sequence_negated_does_not_fire_when_it_came_in_time_and_cools_down() -> None:
    bought = [checkout(T0, 1), ev("purchase", T0 + 10 * MIN, 2)]
    assert run(CHECKOUT, bought, until=T0 + 5 * 3_600_000)[1] == []
    # Two abandoned checkouts within the day's cooldown: one trigger.
    twice = [checkout(T0, 1), checkout(T0 + 2 * 3_600_000, 2)]
    _, fired = run(CHECKOUT, twice, until=T0 + 5 * 3_600_000)
    assert [t.time_ms for t in fired] == [T0 + 30 * MIN]


THEN = settings(
    """
    - name: viewed_then_carted
      kind: sequence
      first: {events: [product_view]}
      then: {events: [add_to_cart]}
      within: 5m
      cooldown: 1h
    """
)


def test_sequence_fires_on_the_second_step_within_the_time() -> None:
    _, fired = run(THEN, [ev("product_view", T0, 1), ev("add_to_cart", T0 + 2 * MIN, 2)])
    assert [(t.time_ms, t.evidence["first_event"], t.evidence["then_event"]) for t in fired] == [
        (T0 + 2 * MIN, "e1", "e2")
    ]
    late = [ev("product_view", T0, 1), ev("add_to_cart", T0 + 6 * MIN, 2)]
    assert run(THEN, late)[1] == []
    wrong_order = [ev("add_to_cart", T0, 1), ev("product_view", T0 + MIN, 2)]
    assert run(THEN, wrong_order)[1] == []
    again = [
        ev("product_view", T0, 1),
        ev("add_to_cart", T0 + MIN, 2),
        ev("product_view", T0 + 2 * MIN, 3),
        ev("add_to_cart", T0 + 3 * MIN, 4),  # within the hour's cooldown
        ev("product_view", T0 + 70 * MIN, 5),
        ev("add_to_cart", T0 + 71 * MIN, 6),
    ]
    assert [t.time_ms for t in run(THEN, again)[1]] == [T0 + MIN, T0 + 71 * MIN]


LOOK = settings(
    """
    - name: long_look
      kind: threshold
      events: [dwell]
      field: properties.dwell_ms
      at_least: 60000
      where: {pages: [/p/]}
      cooldown: 10m
    """
)


def dwell(t: int, n: int, ms: object, page: str = "/p/i1") -> Event:
    return ev("dwell", t, n, page=page, properties={"dwell_ms": str(ms)})


def test_threshold_on_an_event_field() -> None:
    (record,) = run(LOOK, [dwell(T0, 1, 75_000)])[1]
    assert record.evidence == {
        "field": "properties.dwell_ms",
        "value": 75_000.0,
        "at_least": 60_000.0,
        "event_id": "e1",
        "item": "i1",
    }
    quiet = [dwell(T0, 1, 5_000), dwell(T0, 2, 90_000, page="/home"), dwell(T0, 3, "long")]
    assert run(LOOK, quiet)[1] == []
    cooling = [dwell(T0 + i * 4 * MIN, i, 61_000) for i in range(4)]
    assert [t.time_ms for t in run(LOOK, cooling)[1]] == [T0, T0 + 12 * MIN]


MILESTONES = settings(
    "- {name: purchases, kind: threshold, feature: purchase_count, milestones: [1, 3]}"
)


def test_threshold_milestones_fire_once_each() -> None:
    buys = [ev("purchase", T0 + i * MIN, i, item=f"b{i}") for i in range(5)]
    _, fired = run(MILESTONES, buys)
    assert [(t.time_ms, t.evidence["milestone"]) for t in fired] == [(T0, 1.0), (T0 + 2 * MIN, 3.0)]
    # A user who had bought before the rule existed is not congratulated late.
    state, _ = run(settings("- {name: other, kind: absence, of: cart, within: 1m}"), buys)
    assert profile.apply_event(state, ev("purchase", T0 + 9 * MIN, 9), MILESTONES).triggers == []


def test_rule_state_survives_pickling_and_stays_small() -> None:
    state, _ = run(COUNT, [ev("product_view", T0 + i * MIN, i, price=20.0) for i in range(2)])
    restored = pickle.loads(pickle.dumps(state))
    fired = profile.apply_event(restored, ev("product_view", T0 + 2 * MIN, 2, price=20.0), COUNT)
    assert [t.trigger for t in fired.triggers] == ["cheap_shoes"]
    assert len(pickle.dumps(restored.rule_state)) < 200


def test_a_rule_file_change_keeps_the_state_of_unchanged_rules() -> None:
    both = settings(
        """
        - {name: views, kind: count, events: [product_view], at_least: 3, within: 10m}
        - {name: carts, kind: count, events: [add_to_cart], at_least: 2, within: 10m}
        """
    )
    state, _ = run(
        both,
        [
            ev("product_view", T0, 1),
            ev("product_view", T0 + MIN, 2),
            ev("add_to_cart", T0 + MIN, 3),
        ],
    )
    changed = settings(
        """
        - {name: views, kind: count, events: [product_view], at_least: 3, within: 10m}
        - {name: carts, kind: count, events: [add_to_cart], at_least: 2, within: 20m}
        - {name: new_one, kind: absence, of: cart, within: 1h}
        """
    )
    # views kept its two hits: the third fires; carts' definition changed: it restarts.
    fired = profile.apply_event(state, ev("product_view", T0 + 2 * MIN, 4), changed).triggers
    fired += profile.apply_event(state, ev("add_to_cart", T0 + 2 * MIN, 5), changed).triggers
    assert [t.trigger for t in fired] == ["views"]
    # A rule removed from the file leaves no state behind once another rule writes.
    only_views = settings(
        "- {name: views, kind: count, events: [product_view], at_least: 3, within: 10m}"
    )
    profile.apply_event(state, ev("product_view", T0 + 3 * MIN, 6), only_views)
    assert set(state.rule_state) == {"views", "carts"}  # views reused its slot: no prune
    fresh = settings(
        "- {name: views2, kind: count, events: [product_view], at_least: 3, within: 10m}"
    )
    profile.apply_event(state, ev("product_view", T0 + 4 * MIN, 7), fresh)
    assert set(state.rule_state) == {"views2"}


def test_the_cli_checks_a_rule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ops import cli

    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    assert cli.main(["triggers", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "5 rule(s) in force" in out and "checkout_no_purchase" in out and "negate=True" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(rule("- {name: x, kind: count, events: [pv], at_least: 3, within: soon}"))
    assert cli.main(["triggers", "check", str(bad)]) == 1
    assert "rule 'x', field 'within'" in capsys.readouterr().out
