"""``personalize up``'s local API key (ops/local_key.py): made once with every scope,
kept in <run_dir>/api_key (0600), replaced when it no longer matches the keys file, never
made when the operator configured a keys file; the CLI's default key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ops import cli
from ops.local_key import (
    API_KEY_ENV,
    LOCAL_KEY_ID,
    default_api_key,
    ensure_local_access,
    key_file,
    keys_file,
)
from personalization.access import (
    METHOD_SCOPES,
    SCOPES,
    AccessPolicy,
    create_key,
    load_keys_file,
    update_keys_file,
)
from personalization.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return Settings(run_dir=str(tmp_path / "run"))


def test_first_up_makes_a_key_with_every_scope(settings: Settings):
    local = ensure_local_access(settings)
    assert local is not None and local.created
    assert local.settings.serving.api_keys_file == str(keys_file(settings))
    assert local.keys_file == keys_file(settings) and local.key_file == key_file(settings)
    keys = load_keys_file(local.keys_file)
    assert [(k.id, k.scopes) for k in keys] == [(LOCAL_KEY_ID, frozenset(SCOPES))]
    # The file holds the hash only; the key itself is in api_key, readable by its owner.
    assert local.key not in local.keys_file.read_text()
    assert local.key_file.read_text().strip() == local.key
    assert stat.S_IMODE(local.key_file.stat().st_mode) == 0o600
    policy = AccessPolicy(keys)
    for method in METHOD_SCOPES:
        assert policy.decide([("x-api-key", local.key)], method).allowed, method


def test_a_key_missing_a_newer_scope_is_replaced(settings: Settings):
    # A run dir from before a scope (e.g. catalog) existed: its key cannot call the
    # new methods, so `up` replaces it by one with every scope.
    path = keys_file(settings)
    old_scopes = [s for s in SCOPES if s != "catalog"]
    made: list[str] = []

    def add(keys):  # type: ignore[no-untyped-def]
        keys, key = create_key(keys, LOCAL_KEY_ID, old_scopes)
        made.append(key)
        return keys

    update_keys_file(path, add)
    key_file(settings).parent.mkdir(parents=True, exist_ok=True)
    key_file(settings).write_text(made[0] + "\n")
    local = ensure_local_access(settings)
    assert local is not None and local.created and local.key != made[0]
    keys = load_keys_file(path)
    assert [(k.id, k.scopes) for k in keys] == [(LOCAL_KEY_ID, frozenset(SCOPES))]


def test_later_ups_keep_the_key(settings: Settings):
    first = ensure_local_access(settings)
    assert first is not None
    text = first.keys_file.read_text()
    again = ensure_local_access(settings)
    assert again is not None and not again.created and again.key == first.key
    assert first.keys_file.read_text() == text


def test_a_lost_or_revoked_key_is_replaced(settings: Settings):
    first = ensure_local_access(settings)
    assert first is not None
    first.key_file.unlink()
    second = ensure_local_access(settings)
    assert second is not None and second.created and second.key != first.key
    keys = load_keys_file(second.keys_file)
    assert [k.id for k in keys] == [LOCAL_KEY_ID]  # replaced, not added twice
    policy = AccessPolicy(keys)
    assert policy.verify(first.key) is None and policy.verify(second.key) is not None
    # Revoked from the file by hand: the next up makes a new one too.
    update_keys_file(second.keys_file, lambda keys: ())
    third = ensure_local_access(settings)
    assert third is not None and third.created and third.key != second.key


def test_keys_made_before_are_kept_beside_the_local_one(settings: Settings):
    made: list[str] = []

    def add(keys: tuple) -> tuple:
        keys, key = create_key(keys, "web-shop", "recommend")
        made.append(key)
        return keys

    update_keys_file(keys_file(settings), add)
    local = ensure_local_access(settings)
    assert local is not None and local.created
    policy = AccessPolicy(load_keys_file(local.keys_file))
    assert {k.id for k in policy.keys} == {"web-shop", LOCAL_KEY_ID}
    assert policy.verify(made[0]) is not None and policy.verify(local.key) is not None


def test_a_configured_keys_file_is_left_alone(settings: Settings, tmp_path: Path):
    own = tmp_path / "operator-keys.json"
    configured = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"api_keys_file": str(own)})}
    )
    assert ensure_local_access(configured) is None
    assert not own.exists() and not key_file(settings).exists()
    assert not keys_file(settings).exists()


def test_the_cli_key_is_the_environment_else_the_local_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    assert default_api_key(settings) == ""
    local = ensure_local_access(settings)
    assert local is not None
    assert default_api_key(settings) == local.key
    monkeypatch.setenv(API_KEY_ENV, "from-the-environment")
    assert default_api_key(settings) == "from-the-environment"


def test_up_prints_a_new_key_once(settings: Settings, capsys: pytest.CaptureFixture[str]):
    served = cli._local_access(settings)
    out = capsys.readouterr().out
    key = key_file(settings).read_text().strip()
    assert served.serving.api_keys_file == str(keys_file(settings))
    assert key in out and "shown once" in out and API_KEY_ENV in out
    cli._local_access(settings)
    again = capsys.readouterr().out
    assert key not in again and str(key_file(settings)) in again
