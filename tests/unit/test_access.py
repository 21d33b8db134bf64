"""API keys, the keys file, the method table and access decisions (pure), and the
``personalize keys`` commands that edit the file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops import cli
from personalization import access
from personalization.access import (
    ADMIN,
    ANY_KEY,
    COLLECT,
    MAX_CREDENTIALS,
    OPEN,
    PROFILE_READ,
    RECOMMEND,
    REFLECTION_METHOD,
    SCOPES,
    AccessPolicy,
    ApiKey,
    KeysFileError,
    Outcome,
    create_key,
    hash_key,
    load_keys_file,
    method_requirements,
    parse_keys,
    revoke_key,
    update_keys_file,
    write_keys_file,
)
from personalization.v1 import catalog_pb2, recommender_pb2, triggers_pb2

RECOMMEND_METHOD = "/personalization.v1.Recommender/Recommend"
PROFILE_METHOD = "/personalization.v1.Recommender/GetUserProfile"
COLLECT_METHOD = "/personalization.v1.Collector/Collect"
FORGET_METHOD = "/personalization.v1.Admin/ForgetUser"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

READER_KEY = "reader-key-0123456789"
INGEST_KEY = "ingest-key-0123456789"


def entry(key_id: str, key: str, *scopes: str) -> ApiKey:
    return parse_keys(
        json.dumps({"keys": [{"id": key_id, "hash": hash_key(key), "scopes": list(scopes)}]})
    )[0]


@pytest.fixture
def policy() -> AccessPolicy:
    return AccessPolicy(
        [
            entry("reader", READER_KEY, RECOMMEND, PROFILE_READ),
            entry("ingest", INGEST_KEY, COLLECT),
        ],
        admin_token="legacy-admin-token",
    )


# --- the method table -------------------------------------------------------------------


def test_every_method_of_our_services_has_a_scope():
    ours = {
        f"/{service.full_name}/{method.name}"
        for module in (recommender_pb2, triggers_pb2, catalog_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(access.METHOD_SCOPES) == ours
    assert set(access.METHOD_SCOPES.values()) <= set(SCOPES)


def test_health_is_open_and_reflection_open_unless_configured():
    table = method_requirements()
    assert table[HEALTH_CHECK] == OPEN and table["/grpc.health.v1.Health/Watch"] == OPEN
    assert table[REFLECTION_METHOD] == OPEN
    assert method_requirements(reflection_requires_key=True)[REFLECTION_METHOD] == ANY_KEY
    assert {OPEN, ANY_KEY}.isdisjoint(SCOPES)


def test_scopes_per_method():
    table = method_requirements()
    assert table[RECOMMEND_METHOD] == RECOMMEND
    assert table[PROFILE_METHOD] == PROFILE_READ
    assert table[COLLECT_METHOD] == COLLECT
    assert {table[f"/personalization.v1.Admin/{m}"] for m in ("ForgetUser", "SetConsent")} == {
        ADMIN
    }
    assert table["/personalization.v1.Admin/SetModelVersion"] == ADMIN


# --- the keys file ----------------------------------------------------------------------


def test_parse_keys_reads_hashes_and_scopes():
    key = entry("web-shop", "k" * 43, RECOMMEND, COLLECT)
    assert key.id == "web-shop" and key.scopes == {RECOMMEND, COLLECT}
    assert key.hash == hash_key("k" * 43) and key.hash.startswith("sha256:")
    assert len(key.hash) == len("sha256:") + 64
    assert key.actor == "key:web-shop"


GOOD = {"id": "a", "hash": hash_key("a" * 20), "scopes": ["recommend"]}


@pytest.mark.parametrize(
    ("bad_entry", "message"),
    [
        ({"id": "b", "scopes": ["recommend"]}, "entry 1 (id 'b'): missing hash"),
        ({"id": "b", "hash": "md5:00", "scopes": ["recommend"]}, "entry 1 (id 'b'): hash must"),
        (
            {"id": "b", "hash": "sha256:" + "A" * 64, "scopes": ["recommend"]},
            "entry 1 (id 'b'): hash must",
        ),
        (
            {"id": "b", "hash": hash_key("b" * 20), "scopes": ["recomend"]},
            "entry 1 (id 'b'): unknown scope 'recomend'",
        ),
        ({"id": "b", "hash": hash_key("b" * 20), "scopes": []}, "entry 1 (id 'b'): no scopes"),
        (
            {"id": "b", "hash": hash_key("b" * 20), "scopes": "recommend"},
            "entry 1 (id 'b'): scopes must be a list",
        ),
        (
            {"id": "b", "hash": hash_key("b" * 20), "scopes": ["admin"], "key": "plain"},
            "entry 1 (id 'b'): unknown field 'key'",
        ),
        (
            {"id": "no spaces", "hash": hash_key("b" * 20), "scopes": ["admin"]},
            "entry 1 (id 'no spaces'): id must",
        ),
        ({"id": 7, "hash": hash_key("b" * 20), "scopes": ["admin"]}, "entry 1: id must"),
        ("just a string", "entry 1: expected an object"),
        ({**GOOD, "scopes": ["admin"]}, "entry 1 (id 'a'): id used twice"),
        ({**GOOD, "id": "b"}, "entry 1 (id 'b'): same key as 'a'"),
    ],
)
def test_invalid_entries_are_named(bad_entry: object, message: str):
    with pytest.raises(KeysFileError) as err:
        parse_keys(json.dumps({"keys": [GOOD, bad_entry]}))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"keys": {}}', '{"keys": [], "extra": 1}', '{"key": []}']
)
def test_invalid_documents_are_refused(text: str):
    with pytest.raises(KeysFileError):
        parse_keys(text)


def test_load_names_the_file(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"id": "x"}]}')
    with pytest.raises(KeysFileError, match=rf"api keys file {path}: entry 0 \(id 'x'\)"):
        load_keys_file(path)
    with pytest.raises(KeysFileError, match="api keys file"):
        load_keys_file(tmp_path / "missing.json")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(KeysFileError, match="api keys file"):
        load_keys_file(path)


def test_create_write_revoke_round_trip_keeps_no_plain_key(tmp_path: Path):
    path = tmp_path / "sub" / "keys.json"
    keys, first = create_key((), "shop", "recommend,profile:read")
    keys, second = create_key(keys, "ingest", [COLLECT])
    assert first != second and len(first) >= 43
    write_keys_file(path, keys)
    text = path.read_text()
    assert first not in text and second not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temp file left
    loaded = load_keys_file(path)
    assert [(k.id, k.scopes) for k in loaded] == [
        ("shop", {RECOMMEND, PROFILE_READ}),
        ("ingest", {COLLECT}),
    ]
    assert loaded[0].hash == hash_key(first) and loaded[0].created.endswith("Z")
    assert [k.id for k in revoke_key(loaded, "shop")] == ["ingest"]
    with pytest.raises(ValueError, match="no key with id 'nobody'"):
        revoke_key(loaded, "nobody")
    with pytest.raises(ValueError, match="exists"):
        create_key(loaded, "shop", "admin")
    with pytest.raises(ValueError, match="unknown scope"):
        create_key(loaded, "other", "recommend,everything")


def test_update_keys_file_starts_from_nothing_and_keeps_the_mode(tmp_path: Path):
    path = tmp_path / "keys.json"
    update_keys_file(path, lambda keys: create_key(keys, "one", "admin")[0])
    path.chmod(0o640)
    update_keys_file(path, lambda keys: create_key(keys, "two", "collect")[0])
    assert [k.id for k in load_keys_file(path)] == ["one", "two"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_hash_key_refuses_what_no_metadata_can_carry():
    for bad in ("", " padded ", "é" * 10, "x" * 300):
        with pytest.raises(ValueError):
            hash_key(bad)


# --- decisions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "method", "outcome"),
    [
        ((), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
        ((("x-api-key", "nope-nope-nope"),), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
        ((("x-api-key", READER_KEY),), RECOMMEND_METHOD, Outcome.ALLOWED),
        ((("authorization", f"Bearer {READER_KEY}"),), PROFILE_METHOD, Outcome.ALLOWED),
        ((("authorization", f"bearer  {READER_KEY} "),), PROFILE_METHOD, Outcome.ALLOWED),
        ((("x-api-key", READER_KEY),), COLLECT_METHOD, Outcome.PERMISSION_DENIED),
        ((("x-api-key", INGEST_KEY),), COLLECT_METHOD, Outcome.ALLOWED),
        ((("x-api-key", INGEST_KEY),), FORGET_METHOD, Outcome.PERMISSION_DENIED),
        ((("authorization", f"Basic {READER_KEY}"),), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
        ((("authorization", "Bearer"),), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
        ((), HEALTH_CHECK, Outcome.ALLOWED),
        ((), REFLECTION_METHOD, Outcome.ALLOWED),
        # Not in the table: refused to every key, unauthenticated without one.
        ((("x-api-key", READER_KEY),), "/x.Y/Z", Outcome.PERMISSION_DENIED),
        ((), "/x.Y/Z", Outcome.UNAUTHENTICATED),
        # The legacy admin token is an admin key, nothing more.
        ((("authorization", "Bearer legacy-admin-token"),), FORGET_METHOD, Outcome.ALLOWED),
        (
            (("authorization", "Bearer legacy-admin-token"),),
            RECOMMEND_METHOD,
            Outcome.PERMISSION_DENIED,
        ),
        # Each credential counts on its own: one with the scope is enough.
        (
            (("x-api-key", INGEST_KEY), ("authorization", f"Bearer {READER_KEY}")),
            RECOMMEND_METHOD,
            Outcome.ALLOWED,
        ),
        (
            (("x-api-key", "unknown-1"), ("x-api-key", READER_KEY), ("x-api-key", "unknown-1")),
            RECOMMEND_METHOD,
            Outcome.ALLOWED,
        ),
        ((("x-api-key", READER_KEY.encode()),), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
        ((("x-api-key-bin", READER_KEY.encode()),), RECOMMEND_METHOD, Outcome.UNAUTHENTICATED),
    ],
)
def test_decide(policy: AccessPolicy, metadata: tuple, method: str, outcome: Outcome):
    decision = policy.decide(metadata, method)
    assert decision.outcome is outcome, decision.reason
    assert decision.reason


def test_decision_names_the_key_and_the_missing_scope(policy: AccessPolicy):
    allowed = policy.decide((("x-api-key", READER_KEY),), RECOMMEND_METHOD)
    assert allowed.key is not None and allowed.key.actor == "key:reader"
    denied = policy.decide((("x-api-key", READER_KEY),), COLLECT_METHOD)
    assert denied.reason == "key 'reader' lacks scope 'collect'"
    legacy = policy.decide((("authorization", "Bearer legacy-admin-token"),), FORGET_METHOD)
    assert legacy.key is not None and legacy.key.actor == "admin-token"
    assert "legacy-admin-token" not in legacy.reason


def test_admin_scope_does_not_grant_the_other_services():
    admin_only = AccessPolicy([entry("ops", READER_KEY, ADMIN)])
    assert admin_only.decide((("x-api-key", READER_KEY),), FORGET_METHOD).allowed
    for method in (RECOMMEND_METHOD, PROFILE_METHOD, COLLECT_METHOD):
        decision = admin_only.decide((("x-api-key", READER_KEY),), method)
        assert decision.outcome is Outcome.PERMISSION_DENIED


def test_no_legacy_token_without_one_configured():
    bare = AccessPolicy([])
    assert bare.decide((("authorization", "Bearer "),), FORGET_METHOD).outcome is (
        Outcome.UNAUTHENTICATED
    )
    assert bare.keys == ()


def test_reflection_needs_any_key_when_configured():
    strict = AccessPolicy([entry("ingest", INGEST_KEY, COLLECT)], reflection_requires_key=True)
    assert not strict.decide((), REFLECTION_METHOD).allowed
    assert strict.decide((("x-api-key", INGEST_KEY),), REFLECTION_METHOD).allowed
    assert strict.decide((), HEALTH_CHECK).allowed


def test_too_many_credentials_are_refused_before_hashing(policy: AccessPolicy):
    metadata = [("x-api-key", f"guess-{i:04d}") for i in range(MAX_CREDENTIALS + 5)]
    metadata.append(("x-api-key", READER_KEY))
    decision = policy.decide(metadata, RECOMMEND_METHOD)
    assert decision.outcome is Outcome.UNAUTHENTICATED and "credentials" in decision.reason


def test_a_verified_key_is_not_hashed_again(policy: AccessPolicy, monkeypatch):
    calls: list[str] = []
    real = access._digest
    monkeypatch.setattr(access, "_digest", lambda key: calls.append(key) or real(key))
    for _ in range(5):
        assert policy.decide((("x-api-key", READER_KEY),), RECOMMEND_METHOD).allowed
    assert calls == [READER_KEY]
    # Unknown keys are not cached (they cannot grow the cache), so each one is hashed.
    for _ in range(3):
        policy.decide((("x-api-key", "unknown-key"),), RECOMMEND_METHOD)
    assert calls.count("unknown-key") == 3


def test_replacing_the_keys_drops_revoked_ones_at_once(policy: AccessPolicy):
    assert policy.decide((("x-api-key", READER_KEY),), RECOMMEND_METHOD).allowed  # cached
    policy.replace_keys([entry("ingest", INGEST_KEY, COLLECT)])
    assert not policy.decide((("x-api-key", READER_KEY),), RECOMMEND_METHOD).allowed
    assert [k.id for k in policy.keys] == ["ingest"]
    # The legacy token survives a reload of the file.
    assert policy.decide((("authorization", "Bearer legacy-admin-token"),), FORGET_METHOD).allowed


def test_the_cache_stays_bounded():
    keys = [f"key-number-{i:03d}" for i in range(10)]
    small = AccessPolicy(
        parse_keys(
            json.dumps(
                {
                    "keys": [
                        {"id": f"k{i}", "hash": hash_key(k), "scopes": ["recommend"]}
                        for i, k in enumerate(keys)
                    ]
                }
            )
        ),
        cache_size=4,
    )
    for key in keys:
        assert small.decide((("x-api-key", key),), RECOMMEND_METHOD).allowed
    assert len(small._state.verified) <= 4


# --- malformed metadata (property) ------------------------------------------------------

_NAMES = st.one_of(
    st.sampled_from(
        ["authorization", "Authorization", "x-api-key", "X-API-KEY", "x-api-key-bin", "user-agent"]
    ),
    st.text(max_size=20),
)
_VALUES = st.one_of(
    st.text(),  # any code point, lone surrogates included
    st.binary(max_size=64),
    st.builds(lambda v: "Bearer " + v, st.text()),
    st.builds(lambda n: "x" * n, st.integers(0, 20_000)),
    st.builds(lambda n: "Bearer " + "y" * n, st.integers(0, 20_000)),
    st.none(),
    st.integers(),
)
_ITEM = st.one_of(
    st.tuples(_NAMES, _VALUES), st.tuples(_NAMES), st.none(), st.tuples(_NAMES, _VALUES, _VALUES)
)
_METHODS = st.sampled_from([*method_requirements(), "", "/x.Y/Z", "garbage"])


@settings(max_examples=300, deadline=None)
@given(metadata=st.lists(_ITEM, max_size=8), method=_METHODS)
def test_malformed_metadata_never_raises_nor_opens(metadata: list, method: str):
    policy = AccessPolicy([entry("reader", READER_KEY, RECOMMEND)], admin_token="legacy-token")
    decision = policy.decide(metadata, method)
    if method_requirements().get(method) == OPEN:
        assert decision.allowed
    else:
        assert decision.outcome is Outcome.UNAUTHENTICATED
    assert isinstance(decision.reason, str) and decision.reason.isascii()


@settings(max_examples=200, deadline=None)
@given(
    noise=st.lists(st.tuples(st.sampled_from(["user-agent", "x-api-key-bin", "te"]), _VALUES)),
    position=st.integers(0, 8),
    form=st.sampled_from(["x-api-key", "authorization"]),
)
def test_a_valid_key_is_found_among_noise(noise: list, position: int, form: str):
    policy = AccessPolicy([entry("reader", READER_KEY, RECOMMEND)])
    value = READER_KEY if form == "x-api-key" else f"Bearer {READER_KEY}"
    metadata = [*noise[:position], (form, value), *noise[position:]]
    assert policy.decide(metadata, RECOMMEND_METHOD).allowed


# --- personalize keys -------------------------------------------------------------------


def test_keys_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "keys.json"
    args = ["--file", str(path)]
    assert cli.main(["keys", "create", "--id", "shop", "--scopes", "recommend", *args]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert len(key) >= 43 and "\n" not in key  # stdout: the key and nothing else
    assert "shown only now" in err
    assert key not in path.read_text()
    assert load_keys_file(path)[0].hash == hash_key(key)

    assert cli.main(["keys", "list", *args]) == 0
    out, _ = capsys.readouterr()
    assert "shop" in out and "recommend" in out and key not in out

    assert cli.main(["keys", "create", "--id", "shop", "--scopes", "admin", *args]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["keys", "create", "--id", "x", "--scopes", "root", *args]) == 2
    assert "unknown scope 'root'" in capsys.readouterr().err
    assert cli.main(["keys", "create", "--id", "x", *args]) == 2
    capsys.readouterr()

    assert cli.main(["keys", "revoke", "--id", "shop", *args]) == 0
    assert load_keys_file(path) == ()
    assert cli.main(["keys", "revoke", "--id", "shop", *args]) == 2
    assert "no key with id 'shop'" in capsys.readouterr().err

    path.write_text('{"keys": [{"id": "bad"}]}')
    assert cli.main(["keys", "list", *args]) == 2
    assert "entry 0 (id 'bad')" in capsys.readouterr().err


def test_keys_cli_default_file_follows_the_setting(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PZ_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("PZ_SETTINGS_JSON", raising=False)
    monkeypatch.delenv("PZ_SERVING__API_KEYS_FILE", raising=False)
    assert cli.main(["keys", "create", "--id", "a", "--scopes", "collect"]) == 0
    assert [k.id for k in load_keys_file(tmp_path / "api_keys.json")] == ["a"]
    configured = tmp_path / "etc" / "keys.json"
    monkeypatch.setenv("PZ_SERVING__API_KEYS_FILE", str(configured))
    assert cli.main(["keys", "create", "--id", "b", "--scopes", "collect"]) == 0
    assert [k.id for k in load_keys_file(configured)] == ["b"]
