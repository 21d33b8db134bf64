"""Consent, erasure records and pseudonymous ids (pure)."""

from __future__ import annotations

import json

from flink_jobs import profile
from personalization.events import CONSENT, Event, Rejection, parse_event
from personalization.feature_updates import FeatureUpdate, coalesce
from personalization.privacy import audit_record, pseudonymize, pseudonymizer
from personalization.settings import FeatureSettings

CFG = FeatureSettings()
T0 = 1_700_000_000_000


def view(n: int, t: int) -> Event:
    return Event(f"v{n}", "u1", "product_view", t, item_id=f"i{n}", category="shoes")


def consent(value: str, t: int, n: int = 0) -> Event:
    return Event(f"c{n}-{value}", "u1", CONSENT, t, properties={"personalization": value})


def test_consent_events_are_validated():
    ok = parse_event(
        json.dumps(
            {
                "user_id": "u",
                "event_type": "consent",
                "event_time": T0,
                "properties": {"personalization": "denied"},
            }
        ),
        now_ms=T0,
    )
    assert isinstance(ok, Event) and ok.event_type == CONSENT
    bad = parse_event(
        json.dumps({"user_id": "u", "event_type": "consent", "event_time": T0}), now_ms=T0
    )
    assert isinstance(bad, Rejection) and bad.reason == "invalid_consent"


def test_withdrawn_consent_forgets_and_ignores_behaviour():
    state = profile.new_state("u1")
    for n in range(3):
        profile.apply_event(state, view(n, T0 + n), CFG)
    assert state.events_total == 3
    out = profile.apply_event(state, consent("denied", T0 + 10), CFG)
    assert out.changed
    row = profile.user_feature_row(state, CFG)
    assert row["consent"] == "denied"
    assert (
        row["events_total"] == 0 and row["recent_items"] == [] and row["interest_categories"] == []
    )
    ignored = profile.apply_event(state, view(9, T0 + 20), CFG)
    assert ignored.opted_out and not ignored.changed
    assert state.events_total == 0
    again = profile.apply_event(state, consent("granted", T0 + 30, n=1), CFG)
    assert again.changed
    profile.apply_event(state, view(10, T0 + 40), CFG)
    assert state.events_total == 1


def test_consent_change_bumps_the_row_version():
    state = profile.new_state("u1")
    profile.apply_event(state, view(1, T0), CFG)
    before = state.version_us
    profile.apply_event(state, consent("denied", T0), CFG)
    assert state.version_us > before


def test_erasure_record_round_trip_and_coalesce():
    erase = FeatureUpdate("user_profile", "u1", 200, {}, erase=True)
    assert FeatureUpdate.from_json(erase.to_json()) == erase
    older = FeatureUpdate("user_profile", "u1", 100, {"events_total": 3})
    assert coalesce([older, erase]) == [erase]
    newer = FeatureUpdate("user_profile", "u1", 300, {"events_total": 1})
    assert coalesce([erase, newer]) == [newer]


def test_pseudonyms_are_keyed_stable_and_opaque():
    a = pseudonymize("alice", "s3cret")
    assert a == pseudonymize("alice", "s3cret")
    assert a != pseudonymize("alice", "other")
    assert a != pseudonymize("bob", "s3cret")
    assert "alice" not in a and a.startswith("p-") and len(a) == 34
    assert pseudonymizer("")("alice") == "alice"
    assert pseudonymizer("s3cret")("alice") == a


def test_audit_record_fields():
    record = json.loads(audit_record("forget", "p-1", actor="admin", detail="ticket 7"))
    assert record["action"] == "forget" and record["subject"] == "p-1"
    assert record["actor"] == "admin" and record["audit_id"] and record["time_ms"] > 0
