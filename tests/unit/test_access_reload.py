"""serving/auth.py without a network: keys file reloads, the interceptor's refusals, and
access control off when the setting is empty."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalization.access import (
    COLLECT,
    OPEN,
    PROFILE_READ,
    RECOMMEND,
    AccessPolicy,
    KeysFileError,
    create_key,
    hash_key,
    load_keys_file,
    method_requirements,
    parse_keys,
    revoke_key,
    write_keys_file,
)
from personalization.settings import Settings
from serving.auth import AccessControl, AccessInterceptor, KeysFileWatcher, status_code

RECOMMEND_METHOD = "/personalization.v1.Recommender/Recommend"


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.json"
    keys, key = create_key((), "shop", "recommend")
    write_keys_file(path, keys)
    return path, key


def _allowed(policy: AccessPolicy, key: str) -> bool:
    return policy.decide((("x-api-key", key),), RECOMMEND_METHOD).allowed


def test_watcher_reloads_changed_files_and_keeps_keys_of_bad_ones(
    keys_file: tuple[Path, str], caplog: pytest.LogCaptureFixture
):
    path, old_key = keys_file
    policy = AccessPolicy(load_keys_file(path))
    watcher = KeysFileWatcher(path, policy)
    assert not watcher.check()  # unchanged

    keys, new_key = create_key(revoke_key(load_keys_file(path), "shop"), "shop-2", "recommend")
    write_keys_file(path, keys)
    assert watcher.check()
    assert _allowed(policy, new_key) and not _allowed(policy, old_key)

    caplog.set_level(logging.ERROR, logger="serving.auth")
    path.write_text('{"keys": [{"id": "broken"}]}')
    assert not watcher.check()
    assert not watcher.check()  # the same bad file is reported once
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "entry 0 (id 'broken')" in errors[0].getMessage()
    assert _allowed(policy, new_key)

    path.unlink()
    assert not watcher.check()
    assert "missing" in caplog.records[-1].getMessage() and _allowed(policy, new_key)

    write_keys_file(path, keys)
    assert watcher.check() and _allowed(policy, new_key)


def test_an_in_place_edit_of_the_same_size_is_seen(keys_file: tuple[Path, str]):
    path, key = keys_file
    policy = AccessPolicy(load_keys_file(path))
    watcher = KeysFileWatcher(path, policy)
    text = path.read_text()
    path.write_text(text.replace('"recommend"', '"collect"  '))  # same length after padding
    os.utime(path, ns=(1, 1))  # even with an older mtime: the signature changed
    assert watcher.check() and not _allowed(policy, key)


def test_watcher_thread_picks_up_changes(keys_file: tuple[Path, str]):
    path, old_key = keys_file
    policy = AccessPolicy(load_keys_file(path))
    watcher = KeysFileWatcher(path, policy, interval_s=0.05)
    watcher.start()
    try:
        write_keys_file(path, ())
        for _ in range(100):
            if not _allowed(policy, old_key):
                break
            time.sleep(0.02)
        assert not _allowed(policy, old_key)
    finally:
        watcher.stop()


def test_access_off_without_the_setting_logs_one_warning(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="serving.auth")
    assert AccessControl.from_settings(Settings()) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "every RPC is open" in warnings[0].getMessage()


def test_a_bad_keys_file_stops_start_up(tmp_path: Path):
    path = tmp_path / "keys.json"
    settings = Settings.model_validate({"serving": {"api_keys_file": str(path)}})
    with pytest.raises(KeysFileError, match="api keys file"):
        AccessControl.from_settings(settings)
    path.write_text('{"keys": [{"id": "x", "hash": "sha256:00", "scopes": ["admin"]}]}')
    with pytest.raises(KeysFileError, match=r"entry 0 \(id 'x'\)"):
        AccessControl.from_settings(settings)


def test_env_override_of_the_setting(monkeypatch: pytest.MonkeyPatch, keys_file):
    monkeypatch.setenv("PZ_SERVING__API_KEYS_FILE", str(keys_file[0]))
    control = AccessControl.from_settings(Settings())
    assert control is not None and [k.id for k in control.policy.keys] == ["shop"]


class _Details:
    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _Aborted


def _intercept(policy: AccessPolicy, method: str, metadata: Any, handler: Any) -> Any:
    async def continuation(details: Any) -> Any:
        return handler

    return asyncio.run(
        AccessInterceptor(policy).intercept_service(continuation, _Details(method, metadata))
    )


def _refusal_status(refusal: Any) -> tuple[grpc.StatusCode, str]:
    behavior = (
        refusal.unary_unary or refusal.unary_stream or refusal.stream_unary or refusal.stream_stream
    )
    context = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(behavior(b"", context))
    assert context.status is not None
    return context.status


def test_interceptor_passes_allowed_calls_to_their_handler(keys_file: tuple[Path, str]):
    path, key = keys_file
    policy = AccessPolicy(load_keys_file(path))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    assert _intercept(policy, RECOMMEND_METHOD, (("x-api-key", key),), handler) is handler


@pytest.mark.parametrize(
    "make",
    [
        grpc.unary_unary_rpc_method_handler,
        grpc.unary_stream_rpc_method_handler,
        grpc.stream_unary_rpc_method_handler,
        grpc.stream_stream_rpc_method_handler,
    ],
)
def test_refusals_match_the_kind_of_the_method(make: Any, keys_file: tuple[Path, str]):
    policy = AccessPolicy(load_keys_file(keys_file[0]))
    handler = make(lambda request, context: None)
    refusal = _intercept(policy, RECOMMEND_METHOD, (), handler)
    assert refusal is not handler
    assert (refusal.request_streaming, refusal.response_streaming) == (
        handler.request_streaming,
        handler.response_streaming,
    )
    assert refusal.request_deserializer is None  # refused bytes are never decoded
    assert _refusal_status(refusal)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_interceptor_refuses_with_the_decisions_code(keys_file: tuple[Path, str]):
    path, key = keys_file
    policy = AccessPolicy(load_keys_file(path))
    collect = "/personalization.v1.Collector/Collect"
    refusal = _intercept(policy, collect, (("x-api-key", key),), None)
    assert _refusal_status(refusal) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "key 'shop' lacks scope 'collect'",
    )
    # Metadata no gRPC client would send (non-ASCII text, bytes, odd shapes) is refused.
    odd = (("x-api-key", "ключ-" + key), ("authorization", b"Bearer \xff"), ("x-api-key",), None)
    assert _refusal_status(_intercept(policy, RECOMMEND_METHOD, odd, None))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # An unknown method is refused like any other, not told apart as UNIMPLEMENTED.
    assert _refusal_status(_intercept(policy, "/x.Y/Z", (), None))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_a_policy_that_raises_refuses_instead_of_failing(keys_file: tuple[Path, str]):
    class Broken(AccessPolicy):
        def decide(self, metadata: Any, method: str) -> Any:
            raise RuntimeError("bug")

    refusal = _intercept(Broken(()), RECOMMEND_METHOD, (), None)
    assert _refusal_status(refusal)[0] == grpc.StatusCode.UNAUTHENTICATED


# --- malformed metadata through the interceptor (property) ------------------------------

_READER = "reader-key-0123456789"
_INGEST = "ingest-key-0123456789"
_CREDENTIAL_NAMES = ("x-api-key", "authorization")
_NAMES = st.sampled_from(
    [
        *_CREDENTIAL_NAMES,
        "X-API-KEY",
        "Authorization",
        "x-api-key-bin",
        "authorization-bin",
        "user-agent",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [_READER, _INGEST, f"Bearer {_READER}", f"bearer  {_INGEST} ", "Bearer ", "Bearer", ""]
    ),
    st.text(max_size=40),  # non-ASCII, control characters, lone surrogates
    st.builds(lambda v: "Bearer " + v, st.text(max_size=40)),
    st.builds(lambda n, c: c * n, st.integers(0, 40_000), st.sampled_from(["k", "é", "\x00", " "])),
    st.binary(max_size=64),
    st.none(),
)
_METADATA = st.lists(st.tuples(_NAMES, _VALUES), max_size=10)
_ANY_METHOD = st.sampled_from([*method_requirements(), "/x.Y/Z", ""])


@settings(max_examples=300, deadline=None)
@given(metadata=_METADATA, method=_ANY_METHOD)
def test_interceptor_answers_ok_unauthenticated_or_denied_whatever_the_metadata(
    metadata: list, method: str
):
    policy = AccessPolicy(
        parse_keys(
            json.dumps(
                {
                    "keys": [
                        {
                            "id": "reader",
                            "hash": hash_key(_READER),
                            "scopes": [RECOMMEND, PROFILE_READ],
                        },
                        {"id": "ingest", "hash": hash_key(_INGEST), "scopes": [COLLECT]},
                    ]
                }
            )
        )
    )
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    result = _intercept(policy, method, metadata, handler)  # never raises
    decision = policy.decide(metadata, method)
    if result is handler:
        assert decision.allowed
        code = grpc.StatusCode.OK
    else:
        code, details = _refusal_status(result)
        assert code == status_code(decision) and isinstance(details, str)
    assert code in (
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Without a known key among the credential headers, a method that needs one is refused
    # as UNAUTHENTICATED (never PERMISSION_DENIED, never let through).
    presented = " ".join(
        str(value) for name, value in metadata if name.lower() in _CREDENTIAL_NAMES
    )
    if method_requirements().get(method) != OPEN and not (
        _READER in presented or _INGEST in presented
    ):
        assert code == grpc.StatusCode.UNAUTHENTICATED
    if method_requirements().get(method) == OPEN:
        assert code == grpc.StatusCode.OK
