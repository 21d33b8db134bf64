"""The dispatcher's pure pieces: signature, backoff, idempotency key, filters, dead
letters, the identity directory's changes, its settings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from dispatcher import backoff, dead_letters
from dispatcher.envelope import PSEUDONYM, Delivered, body, idempotency_key, wanted
from dispatcher.identity import directory_changes
from dispatcher.signing import sign, verify
from dispatcher.webhooks import AttemptResult, Outcome, load_secret, retryable
from personalization.privacy import pseudonymizer
from personalization.settings import DispatcherSettings, WebhookSettings
from personalization.triggers import Trigger

SECRET = b"whsec-test"
TRIGGER = Trigger("p-abc", "cart_abandoned", 1_700_000_000_000, {"items": ["i1"]}, "absence")


# --- signing ----------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET, b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, b"{}") == f"sha256={expected}"


def test_verify_accepts_ours_and_refuses_tampering_and_stale() -> None:
    payload = b'{"rule":"x"}'
    header = sign(SECRET, 1000, payload)
    assert verify(SECRET, "1000", header, payload, now_s=1010)
    assert not verify(SECRET, "1000", header, payload + b" ", now_s=1010)
    assert not verify(b"other", "1000", header, payload, now_s=1010)
    # The timestamp is signed: a fresh timestamp on an old signature fails.
    assert not verify(SECRET, "1005", header, payload, now_s=1010)
    assert not verify(SECRET, "1000", header, payload, now_s=1000 + 301)
    assert not verify(SECRET, "soon", header, payload, now_s=1000)


# --- backoff ----------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    assert [backoff.ceiling(n, 0.5, 5.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.ceiling(10_000, 0.5, 5.0) == 5.0
    with pytest.raises(ValueError):
        backoff.ceiling(0, 0.5, 5.0)


def test_backoff_is_full_jitter_within_the_ceiling() -> None:
    rng = random.Random(7)
    delays = [backoff.delay(3, 0.5, 30.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    # Spread over the whole range, not clustered at the ceiling.
    assert min(delays) < 0.1 and max(delays) > 1.9
    assert 0.9 < sum(delays) / len(delays) < 1.1


# --- idempotency key, body, filter ----------------------------------------------------------


def test_idempotency_key_is_stable_per_user_rule_and_time() -> None:
    key = idempotency_key(TRIGGER)
    assert key.startswith("trg_") and len(key) == 4 + 32
    same = Trigger(TRIGGER.user_id, TRIGGER.trigger, TRIGGER.time_ms, {"other": 1})
    assert idempotency_key(same) == key  # evidence does not name the trigger
    for other in (
        Trigger("p-abd", TRIGGER.trigger, TRIGGER.time_ms),
        Trigger(TRIGGER.user_id, "browse_intent", TRIGGER.time_ms),
        Trigger(TRIGGER.user_id, TRIGGER.trigger, TRIGGER.time_ms + 1),
    ):
        assert idempotency_key(other) != key
    # No ambiguity from concatenation: ("a", "bc") is not ("ab", "c").
    assert idempotency_key(Trigger("a", "bc", 1)) != idempotency_key(Trigger("ab", "c", 1))


def test_body_is_the_same_bytes_every_time_and_names_the_trigger() -> None:
    delivered = Delivered(TRIGGER, "p-abc", PSEUDONYM, idempotency_key(TRIGGER), 2, 41)
    assert body(delivered) == body(delivered)
    data = json.loads(body(delivered))
    assert data == {
        "id": idempotency_key(TRIGGER),
        "rule": "cart_abandoned",
        "kind": "absence",
        "user": {"id": "p-abc", "kind": "pseudonym"},
        "time_ms": TRIGGER.time_ms,
        "evidence": {"items": ["i1"]},
        "position": {"partition": 2, "offset": 41},
    }


def test_rule_filter() -> None:
    assert wanted((), "anything")
    assert wanted(("cart_abandoned",), "cart_abandoned")
    assert not wanted(("cart_abandoned",), "browse_intent")


# --- retry classification and dead letters ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [(None, True), (500, True), (503, True), (429, True), (408, True), (400, False), (404, False)],
)
def test_what_is_retried(status: int | None, retry: bool) -> None:
    assert retryable(AttemptResult(status, "x")) is retry
    assert not AttemptResult(status).ok


def test_dead_letter_names_endpoint_status_attempts_and_reason() -> None:
    raw = TRIGGER.to_json().encode()
    source = {"topic": "triggers", "partition": 1, "offset": 9}
    failed = json.loads(
        dead_letters.record(
            raw,
            endpoint="crm",
            url="http://127.0.0.1:1/hook",
            idempotency_key="trg_x",
            outcome=Outcome(False, 5, 503, "busy"),
            source=source,
            now_ms=5,
        )
    )
    assert failed["reason"] == "webhook_failed"
    assert (failed["endpoint"], failed["attempts"], failed["last_status"]) == ("crm", 5, 503)
    assert failed["trigger"] == json.loads(raw) and failed["source"] == source
    rejected = json.loads(
        dead_letters.record(
            raw,
            endpoint="crm",
            url="u",
            idempotency_key="k",
            outcome=Outcome(False, 1, 400, "bad"),
            source=source,
            now_ms=5,
        )
    )
    assert rejected["reason"] == "webhook_rejected" and rejected["attempts"] == 1
    invalid = json.loads(dead_letters.invalid_record(b"{}", source=source, now_ms=5))
    assert invalid["reason"] == "invalid_trigger" and invalid["raw"] == "{}"


# --- identity directory -------------------------------------------------------------------


def test_directory_changes_follow_consent_and_erasure() -> None:
    pseudo = pseudonymizer("s")

    def event(user: str, kind: str, **props: str) -> bytes:
        return json.dumps({"user_id": user, "event_type": kind, "properties": props}).encode()

    sets, deletes = directory_changes(
        [
            event("alice", "product_view"),
            event("bob", "product_view"),
            event("bob", "consent", personalization="denied"),
            event("carol", "erasure"),
            event("dave", "erasure"),
            event("dave", "consent", personalization="granted"),
            b"not json",
            json.dumps({"user_id": 7}).encode(),
        ],
        pseudo,
    )
    assert sets == {pseudo("alice"): "alice", pseudo("dave"): "dave"}
    assert deletes == {pseudo("bob"), pseudo("carol")}


# --- settings ---------------------------------------------------------------------------------


def test_webhook_needs_exactly_one_secret_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        WebhookSettings(name="a", url="http://x/")
    with pytest.raises(ValidationError, match="exactly one"):
        WebhookSettings(name="a", url="http://x/", secret_file="/f", secret_env="E")
    with pytest.raises(ValidationError):
        WebhookSettings(name="a", url="ftp://x/", secret_env="E")


def test_dispatcher_settings_refuse_raw_ids_without_directory_and_twin_names() -> None:
    with pytest.raises(ValidationError, match="identity_directory"):
        DispatcherSettings(raw_user_ids=True)
    hook = WebhookSettings(name="a", url="http://x/", secret_env="E")
    with pytest.raises(ValidationError, match="unique"):
        DispatcherSettings(webhooks=(hook, hook))


def test_webhooks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from personalization.settings import Settings

    monkeypatch.setenv(
        "PZ_DISPATCHER__WEBHOOKS",
        '[{"name": "crm", "url": "https://crm.example/hook", "secret_env": "CRM_SECRET",'
        ' "rules": ["cart_abandoned"], "concurrency": 2}]',
    )
    (hook,) = Settings().dispatcher.webhooks
    assert (hook.name, hook.rules, hook.concurrency) == ("crm", ("cart_abandoned",), 2)


def test_secret_from_file_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    assert load_secret(WebhookSettings(name="a", url="http://x/", secret_file=str(path))) == (
        b"from-file"
    )
    by_env = WebhookSettings(name="a", url="http://x/", secret_env="HOOK_SECRET")
    assert load_secret(by_env, {"HOOK_SECRET": "from-env"}) == b"from-env"
    with pytest.raises(ValueError, match="empty signing secret"):
        load_secret(by_env, {})
    with pytest.raises(ValueError, match="secret file"):
        load_secret(WebhookSettings(name="a", url="http://x/", secret_file=str(path) + ".no"))


def test_which_id_without_the_directory() -> None:
    from dispatcher.identity import IdentityResolver
    from personalization.settings import PrivacySettings, Settings

    # No HMAC secret: the stored id is the raw id and says so.
    assert IdentityResolver(Settings()).resolve_many(["u1"]) == [("u1", "raw")]
    # Pseudonymised, raw ids not asked for: the pseudonym, and no Redis is touched.
    pseudonymised = Settings(privacy=PrivacySettings(hmac_secret="s"))
    resolver = IdentityResolver(pseudonymised)
    assert resolver.resolve_many(["p-1", "p-2"]) == [("p-1", PSEUDONYM), ("p-2", PSEUDONYM)]
    assert resolver.lookup("p-1") is None
