"""Rule segments from YAML (pure): the default file is the seven rules the job had
hard-coded, thresholds come from the file, and a bad file names the segment and field."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flink_jobs import profile
from personalization import segments as seg
from personalization.events import Event
from personalization.settings import FeatureSettings

CFG = FeatureSettings()
T0 = 1_700_000_000_000
KINDS = ("product_view", "add_to_cart", "purchase", "remove_from_cart", "favorite")
DEVICES = ("mobile", "desktop", "ios", "tablet", "")


def old_segments(state: profile.UserState, counts: dict[str, int]) -> list[str]:
    """The rules as the job had them in code before the file (the oracle)."""
    out = []
    if state.sessions.count <= 1 and state.purchase_count == 0:
        out.append("new")
    if state.purchase_count >= 1:
        out.append("buyer")
    if state.purchase_count >= 3:
        out.append("loyal")
    if state.monetary >= 500:
        out.append("high_value")
    if counts.get("product_view_24h", 0) >= 10 and not (
        counts.get("add_to_cart_24h", 0) or counts.get("purchase_24h", 0)
    ):
        out.append("window_shopper")
    if state.cart:
        out.append("has_cart")
    if state.last_device in ("mobile", "app", "ios", "android"):
        out.append("mobile")
    return out


def random_user(rng: random.Random, n: int) -> profile.UserState:
    state = profile.new_state("u1")
    t = T0
    for i in range(n):
        t += rng.choice((5_000, 60_000, 3_600_000))
        kind = rng.choices(KINDS, weights=(12, 2, 1, 1, 1))[0]
        event = Event(
            event_id=f"e{i}",
            user_id="u1",
            event_type=kind,
            event_time_ms=t,
            item_id=f"i{rng.randrange(8)}",
            category=f"c{rng.randrange(3)}",
            price=rng.choice((5.0, 120.0, 400.0)),
            device=rng.choice(DEVICES),
        )
        profile.apply_event(state, event, CFG)
    return state


def test_the_default_file_has_the_seven_rules_in_order() -> None:
    rules = seg.load_rules(seg.DEFAULT_RULES_FILE)
    assert [r.name for r in rules] == [
        "new",
        "buyer",
        "loyal",
        "high_value",
        "window_shopper",
        "has_cart",
        "mobile",
    ]


def test_the_default_file_segments_like_the_old_code() -> None:
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(400):
        state = random_user(rng, rng.randrange(1, 40))
        counts = profile.window_counts(state)
        got = profile.segments(state, counts, CFG)
        assert got == old_segments(state, counts)
        seen.update(got)
    # The sample exercised every rule, so the comparison covered each threshold.
    assert seen == {r.name for r in seg.load_rules(seg.DEFAULT_RULES_FILE)}


def test_thresholds_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "segments:\n"
        "  loyal: {min: {purchases: 2}}\n"
        "  big_spender: {min: {monetary: 100}, max: {sessions: 5}}\n"
        "  tablet: {devices: [tablet]}\n"
    )
    rules = seg.load_rules(path)
    state = profile.new_state("u1")
    for i, price in enumerate((60.0, 70.0)):
        event = Event(
            event_id=f"p{i}",
            user_id="u1",
            event_type="purchase",
            event_time_ms=T0 + i * 1000,
            item_id=f"i{i}",
            category="c",
            price=price,
            device="tablet",
        )
        profile.apply_event(state, event, CFG)
    row = profile.user_feature_row(state, CFG, rules)
    assert row["segments"] == ["loyal", "big_spender", "tablet"]
    # The default rules call the same user a buyer (one purchase is enough there).
    assert "buyer" in profile.user_feature_row(state, CFG)["segments"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("segments:\n  vip: {min: {purchase: 3}}\n", ["'vip'", "'min.purchase'", "unknown"]),
        ("segments:\n  vip: {min: {purchases: many}}\n", ["'vip'", "'min.purchases'", "number"]),
        ("segments:\n  vip: {min: {purchases: true}}\n", ["'vip'", "'min.purchases'"]),
        ("segments:\n  vip: {max: {monetary: .inf}}\n", ["'vip'", "'max.monetary'", "finite"]),
        ("segments:\n  vip: {above: {purchases: 3}}\n", ["'vip'", "'above'"]),
        ("segments:\n  vip: {max: [1, 2]}\n", ["'vip'", "'max'"]),
        ("segments:\n  vip: {devices: []}\n", ["'vip'", "'devices'"]),
        ("segments:\n  vip: {devices: [ios, 3]}\n", ["'vip'", "'devices'"]),
        ("segments:\n  vip: {}\n", ["'vip'", "min, max, devices"]),
        (
            "segments:\n  vip: {min: {purchases: 5}, max: {purchases: 2}}\n",
            ["'vip'", "'min.purchases'", "'max.purchases'"],
        ),
        ("segments:\n  Big-Spender: {min: {monetary: 1}}\n", ["'Big-Spender'"]),
        ("rules: []\n", ["'segments'"]),
        ("segments: [unclosed\n", ["not YAML"]),
    ],
)
def test_a_bad_file_names_the_segment_and_field(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(seg.SegmentRuleError) as caught:
        seg.load_rules(path)
    message = str(caught.value)
    assert str(path) in message
    for name in names:
        assert name in message


def test_a_missing_file_is_an_error_not_no_segments(tmp_path: Path) -> None:
    with pytest.raises(seg.SegmentRuleError, match=r"missing\.yaml"):
        seg.load_rules(tmp_path / "missing.yaml")


def test_rules_file_defaults_to_the_packaged_rules(tmp_path: Path) -> None:
    assert seg.rules_file("") == seg.DEFAULT_RULES_FILE
    assert seg.rules_file(str(tmp_path / "r.yaml")) == (tmp_path / "r.yaml").resolve()
