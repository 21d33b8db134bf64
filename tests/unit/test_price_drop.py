"""price_drop rules: the loader's checks, and the item operator's cart record and firing
(flink_jobs/price_drop.py through ItemStep, as the job and LocalPipeline run it)."""

from __future__ import annotations

import pytest

from flink_jobs import price_drop, triggers
from flink_jobs.steps import ItemEvent, ItemStep
from personalization.events import Event
from personalization.settings import FeatureSettings, TriggerSettings
from personalization.trigger_rules import PRICE_DROP, PriceDropRule, RuleFileError, parse_rules

T0 = 1_700_000_000_000
HOUR = 3_600_000
RULES = """
version: 1
rules:
  - name: cart_price_drop
    kind: price_drop
    min_drop: 0.1
    within: 7d
  - name: cart_price_drop_daily
    kind: price_drop
    min_drop: 0.3
    within: 7d
    cooldown: 1d
  - name: browse_intent
    kind: count
    events: [product_view]
    at_least: 3
    within: 10m
"""


def cfg(text: str = RULES) -> FeatureSettings:
    return FeatureSettings(triggers=TriggerSettings(rules_yaml=text))


def ev(user: str, kind: str, t: int, price: float = 0.0, n: int = 0) -> Event:
    return Event(
        event_id=f"{user}-{kind}-{t}-{n}",
        user_id=user,
        event_type=kind,
        event_time_ms=t,
        item_id="sku-1",
        category="shoes",
        price=price,
    )


def run(step: ItemStep, events: list[Event]) -> list[list[tuple[str, str]]]:
    item = None
    fired = []
    for event in events:
        result = step.on_event(item, None, ItemEvent(event, (), b"", 0.0))
        item = result.item or item
        fired.append([(t.user_id, t.trigger) for t in result.triggers])
    return fired


def test_the_loader_reads_price_drop_rules_and_names_bad_fields():
    rules = parse_rules(RULES)
    drop = [r for r in rules if r.kind == PRICE_DROP]
    assert [r.name for r in drop] == ["cart_price_drop", "cart_price_drop_daily"]
    assert isinstance(drop[0], PriceDropRule) and drop[0].min_drop == 0.1
    assert drop[0].within_ms == 7 * 24 * HOUR and drop[1].cooldown_ms == 24 * HOUR
    bad = "rules:\n  - {name: x, kind: price_drop, min_drop: 1.5, within: 1d}\n"
    with pytest.raises(RuleFileError) as err:
        parse_rules(bad)
    assert "'x'" in str(err.value) and "min_drop" in str(err.value)
    with pytest.raises(RuleFileError) as missing:
        parse_rules("rules:\n  - {name: y, kind: price_drop, min_drop: 0.2}\n")
    assert "'y'" in str(missing.value) and "within" in str(missing.value)
    # The user operator does not run them: they are the item operator's.
    assert {r.name for r in triggers.TriggerRules(cfg()).rules} == {"browse_intent"}


def test_a_cheaper_price_fires_for_users_with_the_item_in_their_cart():
    step = ItemStep(cfg())
    fired = run(
        step,
        [
            ev("ann", "add_to_cart", T0, price=100.0),
            ev("bob", "add_to_cart", T0 + 1, price=100.0),
            ev("bob", "remove_from_cart", T0 + 2),
            ev("cat", "product_view", T0 + HOUR, price=95.0),  # -5 %: too little
            ev("cat", "product_view", T0 + 2 * HOUR, price=85.0),  # -15 %: ann
            ev("cat", "product_view", T0 + 3 * HOUR, price=80.0),  # fired once per add
            ev("dan", "product_view", T0 + 4 * HOUR, price=60.0),  # -40 %: daily rule
            ev("dan", "product_view", T0 + 5 * HOUR, price=60.0),  # daily: cooled down
            ev("dan", "product_view", T0 + 30 * HOUR, price=60.0),  # a day later: again
        ],
    )
    assert fired == [
        [],
        [],
        [],
        [],
        [("ann", "cart_price_drop")],
        [],
        [("ann", "cart_price_drop_daily")],
        [],
        [("ann", "cart_price_drop_daily")],
    ]


def test_a_purchase_or_the_window_ends_it_and_the_evidence_says_what_changed():
    step = ItemStep(cfg())
    item = None
    out = []
    for event in [
        ev("ann", "add_to_cart", T0, price=50.0),
        ev("eve", "add_to_cart", T0, price=50.0),
        ev("ann", "purchase", T0 + HOUR, price=50.0),
        ev("zed", "product_view", T0 + 8 * 24 * HOUR, price=20.0),  # eve's add: > 7 d
        ev("eve", "add_to_cart", T0 + 9 * 24 * HOUR, price=20.0),
        ev("zed", "product_view", T0 + 9 * 24 * HOUR + 1, price=10.0),
    ]:
        result = step.on_event(item, None, ItemEvent(event, (), b"", 0.0))
        item = result.item or item
        out.extend(result.triggers)
    assert [(t.user_id, t.trigger) for t in out] == [
        ("eve", "cart_price_drop"),
        ("eve", "cart_price_drop_daily"),
    ]
    evidence = out[0].evidence
    assert evidence["price_added"] == 20.0 and evidence["price_now"] == 10.0
    assert evidence["drop"] == 0.5 and evidence["item_id"] == "sku-1"
    assert out[0].kind == PRICE_DROP and out[0].time_ms == T0 + 9 * 24 * HOUR + 1


def test_the_cart_record_is_bounded_and_absent_without_rules():
    carts: dict[str, list] = {}
    for n in range(price_drop.MAX_CARTS + 25):
        price_drop.track_cart(carts, ev(f"u{n}", "add_to_cart", T0 + n, price=10.0), 10.0)
    assert len(carts) == price_drop.MAX_CARTS and "u0" not in carts  # oldest dropped
    plain = ItemStep(cfg("rules: []\n"))
    result = plain.on_event(None, None, ItemEvent(ev("a", "add_to_cart", T0, 9.0), (), b"", 0.0))
    assert result.item is not None and result.item.carts == {}


def test_where_limits_the_items_a_rule_watches():
    text = (
        "rules:\n"
        "  - {name: shoes_drop, kind: price_drop, min_drop: 0.1, within: 1d,"
        " where: {categories: [shoes]}}\n"
        "  - {name: books_drop, kind: price_drop, min_drop: 0.1, within: 1d,"
        " where: {categories: [books]}}\n"
    )
    fired = run(
        ItemStep(cfg(text)),
        [ev("ann", "add_to_cart", T0, price=10.0), ev("bob", "product_view", T0 + 1, price=5.0)],
    )
    assert fired == [[], [("ann", "shoes_drop")]]  # sku-1 is in shoes


def test_a_price_cut_in_the_catalog_fires_for_the_carts() -> None:
    from personalization.catalog_records import CatalogItem

    cut = CatalogItem("sku-1", category_path=("Shop", "shoes"), price=80.0, updated_ms=T0 + HOUR)
    event = price_drop.catalog_price_event(cut, now_ms=T0 + 2 * HOUR)
    assert event is not None
    assert (event.event_type, event.user_id, event.event_time_ms) == (
        price_drop.CATALOG_PRICE,
        "",
        T0 + HOUR,  # the record's own time, not when it was read
    )
    assert (event.item_id, event.category, event.price) == ("sku-1", "shoes", 80.0)
    step = ItemStep(cfg())
    fired = run(step, [ev("a", "add_to_cart", T0, 100.0), event])
    assert fired == [[], [("a", "cart_price_drop")]]
    # No price, or a deletion: nothing for the item operator.
    assert price_drop.catalog_price_event(CatalogItem("sku-1"), now_ms=T0) is None
    gone = CatalogItem("sku-1", price=10.0, deleted=True)
    assert price_drop.catalog_price_event(gone, now_ms=T0) is None
