"""Consent, erasure records and pseudonymous ids (pure)."""

from __future__ import annotations

import json
from typing import Any

from feature_repo.names import USER_CF, USER_PROFILE
from flink_jobs import profile, steps
from personalization.events import CONSENT, Event, Rejection, parse_event
from personalization.feature_updates import FeatureUpdate, coalesce
from personalization.privacy import audit_record, pseudonymize, pseudonymizer
from personalization.settings import FeatureSettings, PrivacySettings, Settings

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
    # Regression: the newer row used to replace the erasure, so the other views of the
    # entity (user_cf: the learned factors) outlived a consent withdrawal or an expiry
    # that erased and re-wrote the user in one record. The erasure stays, first.
    assert coalesce([erase, newer]) == [erase, newer]
    factors = FeatureUpdate("user_cf", "u1", 150, {"cf_vector": [0.1]})
    newer_factors = FeatureUpdate("user_cf", "u1", 250, {"cf_vector": [0.2]})
    item = FeatureUpdate("item_stats", "u1", 100, {"category": "c"})  # same id, an item
    assert coalesce([factors, older, erase, item]) == [erase, item]
    assert coalesce([erase, factors, newer_factors]) == [erase, newer_factors]


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


# --- the user step: opt-out and retention reach the store (flink_jobs/steps.py) ----------


def _step(retention_days: int = 90) -> steps.UserStep:
    settings = Settings(privacy=PrivacySettings(retention_days=retention_days))
    return steps.UserStep(settings.features, settings.privacy, settings.learning)


def _fold(step: steps.UserStep, events: list[Event]) -> tuple[Any, list[FeatureUpdate]]:
    user, rows = None, []
    for event in events:
        result = step.on_event(user, event)
        if result.changed:
            user = result.state
        rows += result.rows
    return user, rows


def test_withdrawn_consent_erases_every_view_of_the_user_then_writes_denied():
    step = _step()
    user, rows = _fold(step, [view(n, T0 + n) for n in range(3)])
    assert user.cf_factors and any(r.view == USER_CF for r in rows)  # learnt factors
    result = step.on_event(user, consent("denied", T0 + 10))
    erase, row = result.rows
    assert erase.erase and erase.view == USER_PROFILE
    assert row.features["consent"] == "denied" and row.version_us > erase.version_us
    assert not result.state.cf_factors
    # Through the writer's coalescing, the erasure survives beside the newer row: the
    # user_cf view (another view of the same hash) is cleared with it.
    assert coalesce([*rows, erase, row]) == [erase, row]
    # Granting again starts from nothing: no factors until the next interaction.
    again = step.on_event(result.state, consent("granted", T0 + 20, n=1))
    assert [r.erase for r in again.rows] == [False] and not again.state.cf_factors


def test_a_user_past_retention_starts_from_nothing_after_an_erasure():
    step = _step(retention_days=1)
    user, _ = _fold(step, [view(n, T0 + n) for n in range(3)])
    assert user.events_total == 3
    later = T0 + 2 * 86_400_000
    result = step.on_event(user, view(9, later))
    assert result.rows[0].erase and result.rows[0].version_us < result.state.version_us
    assert result.state.events_total == 1  # a fresh state, not the old one plus one
    # Within retention nothing is erased.
    kept = _step(retention_days=1).on_event(user, view(8, T0 + 3_600_000))
    assert not any(r.erase for r in kept.rows) and kept.state.events_total == 4


def test_no_retention_arms_no_expiry():
    step = _step(retention_days=0)
    user, _ = _fold(step, [view(0, T0)])
    assert step.expires_at(user) is None and step.expired(user, T0 + 10**12) is None
