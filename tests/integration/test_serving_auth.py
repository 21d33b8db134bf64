"""Access control on the real asyncio gRPC server (in process) against the session's Redis.

Every RPC of every service is called with no key, an unknown key, a key holding every
scope but the method's, and a key with the method's scope: UNAUTHENTICATED,
UNAUTHENTICATED, PERMISSION_DENIED, and then the servicer's own answer (Kafka is a port
nobody listens on, so Collect with events is UNAVAILABLE, and so is GetUserProfile,
whose audit record cannot be written; an empty batch is OK). Health stays open;
reflection is open unless configured; malformed metadata never yields INTERNAL; keys
rotate (revoke + create in the file) without a restart. With a real Kafka, a profile
read leaves an audit record naming the key (or ``anonymous``) and the pseudonym.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import strategies as st

from ops.infra.processes import free_port
from personalization.access import (
    ADMIN,
    CATALOG,
    COLLECT,
    METHOD_SCOPES,
    PROFILE_READ,
    RECOMMEND,
    SCOPES,
    create_key,
    revoke_key,
    update_keys_file,
    write_keys_file,
)
from personalization.settings import Settings
from personalization.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from serving.app import ServingApp
from serving.auth import status_code
from serving.client import RecommenderClient
from tests.conftest import ADMIN_TOKEN
from tests.identity import stored_id
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def _settings(base: Settings, keys_file: Path, **serving: Any) -> Settings:
    return base.model_copy(
        update={
            # Nothing listens there: Collect and audit writes time out quickly.
            "kafka": base.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
            ),
            "serving": base.serving.model_copy(
                update={
                    "port": 0,
                    "api_keys_file": str(keys_file),
                    "api_keys_reload_s": 0.1,
                    "collect_ack_timeout_s": 0.3,
                    **serving,
                }
            ),
        }
    )


@dataclass
class Server:
    app: ServingApp
    keys_file: Path
    # Scope -> a key holding exactly that scope / every scope but that one.
    only: dict[str, str]
    all_but: dict[str, str]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.app.target)


def _write_scoped_keys(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    keys: tuple = ()
    only: dict[str, str] = {}
    all_but: dict[str, str] = {}
    for scope in SCOPES:
        name = scope.replace(":", "-")
        keys, only[scope] = create_key(keys, f"only-{name}", [scope])
        others = [s for s in SCOPES if s != scope]
        keys, all_but[scope] = create_key(keys, f"all-but-{name}", others)
    write_keys_file(path, keys)
    return only, all_but


@pytest.fixture(scope="module")
def server(redis_server: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys_file = tmp_path_factory.mktemp("auth") / "api_keys.json"
    only, all_but = _write_scoped_keys(keys_file)
    app = ServingApp(_settings(redis_server, keys_file)).start()
    try:
        yield Server(app, keys_file, only, all_but)
    finally:
        app.stop(grace_s=0.5)


@dataclass(frozen=True)
class Rpc:
    name: str
    scope: str
    call: Callable[[grpc.Channel, list[tuple[str, Any]]], Any]
    # The servicer's answer once the call is let through.
    passed: grpc.StatusCode


def _recommend(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.RecommenderStub(channel).Recommend(
        recommender_pb2.RecommendRequest(user_id="auth-user", k=3), metadata=metadata, timeout=5
    )


def _profile(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.RecommenderStub(channel).GetUserProfile(
        recommender_pb2.GetUserProfileRequest(user_id="auth-user"), metadata=metadata, timeout=5
    )


def _collect(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.CollectorStub(channel).Collect(
        recommender_pb2.CollectRequest(), metadata=metadata, timeout=5
    )


def _forget(channel: grpc.Channel, metadata: list) -> Any:
    # No user id: INVALID_ARGUMENT once the servicer has accepted the caller.
    return recommender_pb2_grpc.AdminStub(channel).ForgetUser(
        recommender_pb2.ForgetUserRequest(user_id=""), metadata=metadata, timeout=5
    )


def _consent(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.AdminStub(channel).SetConsent(
        recommender_pb2.SetConsentRequest(user_id="", personalization=True),
        metadata=metadata,
        timeout=5,
    )


def _model_version(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.AdminStub(channel).SetModelVersion(
        recommender_pb2.SetModelVersionRequest(model="no-such-model", action="promote"),
        metadata=metadata,
        timeout=5,
    )


def _similar(channel: grpc.Channel, metadata: list) -> Any:
    return recommender_pb2_grpc.RecommenderStub(channel).SimilarItems(
        recommender_pb2.SimilarItemsRequest(item_id="auth-no-such-item", k=3),
        metadata=metadata,
        timeout=5,
    )


def _upsert(channel: grpc.Channel, metadata: list) -> Any:
    return catalog_pb2_grpc.CatalogStub(channel).UpsertItems(
        catalog_pb2.UpsertItemsRequest(), metadata=metadata, timeout=5
    )


def _delete(channel: grpc.Channel, metadata: list) -> Any:
    return catalog_pb2_grpc.CatalogStub(channel).DeleteItems(
        catalog_pb2.DeleteItemsRequest(), metadata=metadata, timeout=5
    )


RPCS = [
    Rpc("Recommend", RECOMMEND, _recommend, OK),
    # An item the catalog does not hold: let through, then NOT_FOUND.
    Rpc("SimilarItems", RECOMMEND, _similar, grpc.StatusCode.NOT_FOUND),
    # Nothing to write: let through, then INVALID_ARGUMENT.
    Rpc("UpsertItems", CATALOG, _upsert, grpc.StatusCode.INVALID_ARGUMENT),
    Rpc("DeleteItems", CATALOG, _delete, grpc.StatusCode.INVALID_ARGUMENT),
    # Let through, it writes its audit record first: no Kafka here, so UNAVAILABLE.
    Rpc("GetUserProfile", PROFILE_READ, _profile, grpc.StatusCode.UNAVAILABLE),
    Rpc("Collect", COLLECT, _collect, OK),
    Rpc("ForgetUser", ADMIN, _forget, grpc.StatusCode.INVALID_ARGUMENT),
    Rpc("SetConsent", ADMIN, _consent, grpc.StatusCode.INVALID_ARGUMENT),
    Rpc("SetModelVersion", ADMIN, _model_version, grpc.StatusCode.NOT_FOUND),
]


def _code(call: Callable[[grpc.Channel, list], Any], channel: grpc.Channel, metadata: list) -> Any:
    try:
        call(channel, metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return OK


# The Triggers service is the dispatcher's, not this server's: its access control is
# tested on the dispatcher (tests/integration/test_dispatcher.py).
SERVED_HERE = {m: s for m, s in METHOD_SCOPES.items() if "/personalization.v1.Triggers/" not in m}


def test_the_matrix_covers_every_method():
    assert len(RPCS) == len(SERVED_HERE) >= 9
    assert {(name.rsplit("/", 1)[1], scope) for name, scope in SERVED_HERE.items()} == {
        (r.name, r.scope) for r in RPCS
    }


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
@pytest.mark.parametrize("case", ["no key", "unknown key", "wrong scope", "right scope"])
def test_every_rpc_by_key(server: Server, rpc: Rpc, case: str):
    metadata = {
        "no key": [],
        "unknown key": [("x-api-key", "not-a-key-of-this-server-0123456789")],
        "wrong scope": [("x-api-key", server.all_but[rpc.scope])],
        "right scope": [("authorization", f"Bearer {server.only[rpc.scope]}")],
    }[case]
    expected = {
        "no key": UNAUTHENTICATED,
        "unknown key": UNAUTHENTICATED,
        "wrong scope": PERMISSION_DENIED,
        "right scope": rpc.passed,
    }[case]
    with server.channel() as channel:
        assert _code(rpc.call, channel, metadata) == expected


def test_collect_with_events_reaches_kafka(server: Server):
    """The collect key gets as far as Kafka (which is not there: UNAVAILABLE)."""
    event = {"user_id": "u", "event_type": "page_view", "event_time": 1_700_000_000_000}
    with RecommenderClient(server.app.target, api_key=server.only[COLLECT]) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.collect([event])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_typed_client_sends_its_key_on_every_call(server: Server):
    everything = server.all_but[ADMIN]  # collect, recommend, profile:read
    with RecommenderClient(server.app.target, deadline_s=5, api_key=everything) as client:
        assert client.recommend("auth-user", k=3).items is not None
        with pytest.raises(grpc.RpcError) as err:
            client.get_user_profile("auth-user")  # past the key check, to the audit write
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.collect([]).accepted == 0
        with pytest.raises(grpc.RpcError) as err:
            client.set_model_version("no-such-model", "promote")
        assert err.value.code() == PERMISSION_DENIED
    with RecommenderClient(server.app.target, deadline_s=5) as keyless:
        with pytest.raises(grpc.RpcError) as err:
            keyless.recommend("auth-user", k=3)
        assert err.value.code() == UNAUTHENTICATED


def test_legacy_admin_token_still_works_for_admin_only(server: Server):
    bearer = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    with server.channel() as channel:
        assert _code(_model_version, channel, bearer) == grpc.StatusCode.NOT_FOUND
        assert _code(_forget, channel, bearer) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(_recommend, channel, bearer) == PERMISSION_DENIED
    # A client with an API key and the token: Admin calls carry both and pass.
    with RecommenderClient(
        server.app.target, deadline_s=5, api_key=server.only[RECOMMEND], admin_token=ADMIN_TOKEN
    ) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.set_model_version("no-such-model", "promote")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


class _Metadata:
    """What the Admin servicer sees of a call: its metadata, and abort."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata
        self.aborted: grpc.StatusCode | None = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = code
        raise RuntimeError(details)


def test_audit_records_name_the_acting_key(server: Server):
    admin = server.app.admin
    assert admin is not None
    assert admin._authorize(_Metadata([("x-api-key", server.only[ADMIN])])) == "key:only-admin"
    legacy = _Metadata([("authorization", f"Bearer {ADMIN_TOKEN}")])
    assert admin._authorize(legacy) == "admin-token"
    denied = _Metadata([("x-api-key", server.only[COLLECT])])
    with pytest.raises(RuntimeError):
        admin._authorize(denied)
    assert denied.aborted == PERMISSION_DENIED


def test_health_is_open_without_a_key(server: Server):
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "personalization.v1.Recommender"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def _list_services(channel: grpc.Channel, metadata: list) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
    return [s.name for reply in replies for s in reply.list_services_response.service]


def test_reflection_is_open_by_default(server: Server):
    with server.channel() as channel:
        assert "personalization.v1.Recommender" in _list_services(channel, [])


def test_reflection_can_require_a_key(redis_server: Settings, tmp_path: Path):
    keys_file = tmp_path / "keys.json"
    keys, key = create_key((), "ingest", "collect")
    write_keys_file(keys_file, keys)
    settings = _settings(redis_server, keys_file, reflection_requires_key=True)
    app = ServingApp(settings, enable_collector=False).start()
    try:
        with grpc.insecure_channel(app.target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                _list_services(channel, [])
            assert err.value.code() == UNAUTHENTICATED
            # Any valid key will do, whatever its scopes.
            assert "personalization.v1.Recommender" in _list_services(channel, [("x-api-key", key)])
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        app.stop(grace_s=0.5)


MALFORMED: list[tuple[str, list[tuple[str, Any]], set[grpc.StatusCode]]] = [
    ("huge value under gRPC's limit", [("x-api-key", "a" * 6_000)], {UNAUTHENTICATED}),
    # gRPC itself refuses metadata past its limit (8 KiB soft, 16 KiB hard) before any
    # interceptor runs.
    (
        "huge value over gRPC's limit",
        [("authorization", "Bearer " + "b" * 40_000)],
        {UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED},
    ),
    ("many headers", [("x-api-key", f"guess-{i}") for i in range(50)], {UNAUTHENTICATED}),
    ("repeated unknown", [("x-api-key", "nope-1"), ("x-api-key", "nope-1")], {UNAUTHENTICATED}),
    ("binary header with a key", [("x-api-key-bin", b"\xff\x00\xfe")], {UNAUTHENTICATED}),
    ("binary authorization", [("authorization-bin", b"Bearer \x80")], {UNAUTHENTICATED}),
    ("empty bearer", [("authorization", "Bearer ")], {UNAUTHENTICATED}),
    ("other scheme", [("authorization", "Basic dXNlcjpwYXNz")], {UNAUTHENTICATED}),
    ("empty x-api-key", [("x-api-key", "")], {UNAUTHENTICATED}),
    ("spaces only", [("x-api-key", "     ")], {UNAUTHENTICATED}),
    ("punctuation", [("x-api-key", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")], {UNAUTHENTICATED}),
]


@pytest.mark.parametrize(("name", "metadata", "codes"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_metadata_is_refused_never_internal(
    server: Server, name: str, metadata: list, codes: set[grpc.StatusCode]
):
    with server.channel() as channel:
        for rpc in RPCS:
            code = _code(rpc.call, channel, metadata)
            assert code in codes, f"{rpc.name}: {code}"
        # The server is fine afterwards.
        assert _code(_recommend, channel, [("x-api-key", server.only[RECOMMEND])]) == OK


def test_a_valid_key_passes_beside_malformed_metadata(server: Server):
    key = server.only[RECOMMEND]
    metadata = [
        ("x-api-key-bin", b"\x00\xff"),
        ("x-api-key", "unknown-key-1"),
        ("authorization", "Basic zzz"),
        ("x-api-key", key),
        ("x-api-key", key),
    ]
    with server.channel() as channel:
        assert _code(_recommend, channel, metadata) == OK


def test_non_ascii_text_metadata_never_leaves_a_grpc_client(server: Server):
    """Text metadata is ASCII by the gRPC spec: grpc refuses to send anything else, so
    it cannot reach the server as text (the policy still copes with it, see
    tests/unit/test_access.py)."""
    with server.channel() as channel, pytest.raises(ValueError, match="metadata was invalid"):
        _recommend(channel, [("x-api-key", "ключ")])


def test_keys_rotate_without_a_restart(
    redis_server: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    keys_file = tmp_path / "keys.json"
    keys, old_key = create_key((), "shop", "recommend")
    write_keys_file(keys_file, keys)
    app = ServingApp(_settings(redis_server, keys_file), enable_collector=False).start()
    target = app.target

    def code(key: str) -> Any:
        with grpc.insecure_channel(target) as channel:
            return _code(_recommend, channel, [("x-api-key", key)])

    try:
        assert code(old_key) == OK
        new_keys: list[str] = []

        def rotate(current: tuple) -> tuple:
            updated, key = create_key(revoke_key(current, "shop"), "shop-2", "recommend")
            new_keys.append(key)
            return updated

        update_keys_file(keys_file, rotate)
        new_key = new_keys[0]
        wait_for(lambda: code(old_key) == UNAUTHENTICATED, 5, "the revoked key to be refused")
        assert code(new_key) == OK

        # A file that does not parse keeps the keys in force and says why.
        caplog.set_level(logging.ERROR, logger="serving.auth")
        keys_file.write_text('{"keys": [{"id": "half-written"')
        wait_for(
            lambda: any("keeping the previous keys" in r.getMessage() for r in caplog.records),
            5,
            "the parse error to be logged",
        )
        assert code(new_key) == OK and code(old_key) == UNAUTHENTICATED

        # Scopes change too: the same key loses recommend once the file says so.
        write_keys_file(keys_file, ())
        wait_for(lambda: code(new_key) == UNAUTHENTICATED, 5, "the emptied file to apply")
    finally:
        app.stop(grace_s=0.5)


def test_without_the_setting_every_rpc_stays_open(
    redis_server: Settings, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="serving.auth")
    settings = _settings(redis_server, Path("unused"), api_keys_file="")
    app = ServingApp(settings, enable_collector=False).start()
    try:
        assert app.access is None
        with grpc.insecure_channel(app.target) as channel:
            assert _code(_recommend, channel, []) == OK
            assert _code(_profile, channel, [("x-api-key", "anything")]) == OK
        warnings = [r.getMessage() for r in caplog.records if r.name == "serving.auth"]
        assert len(warnings) == 1 and "every RPC is open" in warnings[0]
    finally:
        app.stop(grace_s=0.5)


def _audit_trail(settings: Settings) -> list[dict[str, Any]]:
    """Every record of the audit topic up to its current end (writes are acknowledged
    before the RPC answers, so what the calls wrote is all there)."""
    topic = settings.kafka.audit_topic
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"audit-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[dict[str, Any]] = []
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                records.append(json.loads(msg.value()))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    pending.discard(msg.partition())
        assert not pending, f"audit partitions not read to their end: {pending}"
        return records
    finally:
        consumer.close()


def test_profile_reads_are_audited(redis_server: Settings, kafka_broker: Settings, tmp_path: Path):
    """who (the key, or anonymous without access control), whose (the pseudonym), when;
    refused calls and Recommend leave no record."""
    keys_file = tmp_path / "keys.json"
    keys, reader_key = create_key((), "support-desk", [PROFILE_READ])
    keys, shop_key = create_key(keys, "web-shop", [RECOMMEND])
    write_keys_file(keys_file, keys)
    base = kafka_broker.model_copy(
        update={"serving": kafka_broker.serving.model_copy(update={"port": 0})}
    )
    secured = base.model_copy(
        update={"serving": base.serving.model_copy(update={"api_keys_file": str(keys_file)})}
    )
    user, other = f"audited-{uuid.uuid4().hex[:8]}", f"audited-{uuid.uuid4().hex[:8]}"
    started_ms = int(time.time() * 1000)
    app = ServingApp(secured).start()
    try:
        with RecommenderClient(app.target, deadline_s=10, api_key=reader_key) as client:
            assert not client.get_user_profile(user).found
        with RecommenderClient(app.target, deadline_s=10, api_key=shop_key) as client:
            assert client.recommend(user, k=3).items is not None
            with pytest.raises(grpc.RpcError) as err:
                client.get_user_profile(user)
            assert err.value.code() == PERMISSION_DENIED
    finally:
        app.stop(grace_s=0.5)
    open_app = ServingApp(base).start()
    try:
        with RecommenderClient(open_app.target, deadline_s=10) as client:
            assert not client.get_user_profile(other).found
    finally:
        open_app.stop(grace_s=0.5)
    ended_ms = int(time.time() * 1000)

    trail = _audit_trail(base)
    subject = stored_id(base, user)
    assert subject != user
    mine = [r for r in trail if r["subject"] == subject]
    assert len(mine) == 1, mine  # the denied read and Recommend wrote nothing
    assert mine[0]["action"] == "profile:read" and mine[0]["actor"] == "key:support-desk"
    assert started_ms <= mine[0]["time_ms"] <= ended_ms
    # Only the pseudonym is written, never the raw id.
    assert not [r for r in trail if user in json.dumps(r) or other in json.dumps(r)]
    anonymous = [r for r in trail if r["subject"] == stored_id(base, other)]
    assert [(r["action"], r["actor"]) for r in anonymous] == [("profile:read", "anonymous")]


def test_the_cli_uses_the_local_key_of_up(
    redis_server: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """What `personalize up` sets up (ops/local_key.py) lets `personalize recommend` and
    `profile` through with no key given; without it they are refused."""
    from ops import cli

    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    # Validated anew (not model_copy): run_path is cached from the run_dir it was built with.
    data = redis_server.model_dump()
    data["run_dir"] = str(tmp_path / "run")
    data["serving"]["port"] = 0
    served = cli._local_access(Settings.model_validate(data))
    assert served.run_path == (tmp_path / "run").resolve()
    assert served.serving.api_keys_file
    app = ServingApp(served, enable_collector=False).start()
    try:
        client_settings = served.model_copy(
            update={"serving": served.serving.model_copy(update={"port": app.port})}
        )
        parser = cli.build_parser()
        capsys.readouterr()
        assert cli.cmd_recommend(client_settings, parser.parse_args(["recommend", "cli-u"])) == 0
        assert "strategy=" in capsys.readouterr().out
        assert cli.cmd_profile(client_settings, parser.parse_args(["profile", "cli-u"])) == 0
        assert '"userId": "cli-u"' in capsys.readouterr().out
        # The same commands without the local key file: refused.
        (tmp_path / "run" / "api_key").unlink()
        with pytest.raises(grpc.RpcError) as err:
            cli.cmd_recommend(client_settings, parser.parse_args(["recommend", "cli-u"]))
        assert err.value.code() == UNAUTHENTICATED
    finally:
        app.stop(grace_s=0.5)


# Over the wire gRPC carries lower-case names and, in text headers, printable ASCII only
# (the client refuses anything else: see above); binary (-bin) headers carry any bytes,
# UTF-8 of non-ASCII text included. Sizes stay under gRPC's 8 KiB metadata soft limit,
# past which gRPC itself may refuse the call (RESOURCE_EXHAUSTED, before any interceptor).
_WIRE_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_WIRE_FAKES = st.one_of(
    st.sampled_from(["Bearer ", "Bearer", "bearer", "", "   ", "Basic dXNlcjpwYXNz"]),
    _WIRE_TEXT,
    st.builds(lambda v: "Bearer " + v, _WIRE_TEXT),
    st.builds(lambda n, c: c * n, st.integers(0, 1_200), st.sampled_from(["k", "~", " "])),
)
_WIRE_BINARY = st.one_of(st.binary(max_size=64), st.just("ключ".encode()))


def _wire_metadata(server: Server) -> st.SearchStrategy[list[tuple[str, Any]]]:
    keys = [*server.only.values(), *server.all_but.values()]
    key = st.sampled_from(keys)
    text_value = st.one_of(_WIRE_FAKES, key, st.builds(lambda k: f"Bearer {k}", key))
    text = st.tuples(st.sampled_from(["x-api-key", "authorization", "user-agent-x"]), text_value)
    binary = st.tuples(st.sampled_from(["x-api-key-bin", "authorization-bin"]), _WIRE_BINARY)
    return st.lists(st.one_of(text, binary), max_size=6)


def test_malformed_metadata_over_the_wire_is_ok_unauthenticated_or_denied(server: Server):
    """Hypothesis over real calls: huge values, repeated x-api-key / authorization
    headers, empty bearers, binary headers with non-ASCII bytes, valid keys among them.
    The answer is the policy's (OK, UNAUTHENTICATED or PERMISSION_DENIED), never INTERNAL."""
    policy = server.app.access.policy if server.app.access else None
    assert policy is not None
    calls = {
        "/personalization.v1.Recommender/Recommend": _recommend,
        "/personalization.v1.Collector/Collect": _collect,  # an empty batch: OK when let in
    }
    seen: set[grpc.StatusCode] = set()

    @hypothesis.settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    )
    @hypothesis.given(metadata=_wire_metadata(server), method=st.sampled_from(sorted(calls)))
    def check(metadata: list[tuple[str, Any]], method: str) -> None:
        with server.channel() as channel:
            code = _code(calls[method], channel, metadata)
        seen.add(code)
        assert code in (OK, UNAUTHENTICATED, PERMISSION_DENIED), (code, metadata)
        assert code == status_code(policy.decide(metadata, method)), (code, metadata)

    check()
    # The draws reached every outcome (a test that only ever saw one proves little).
    assert seen == {OK, UNAUTHENTICATED, PERMISSION_DENIED}, seen
    with server.channel() as channel:
        assert _code(_recommend, channel, [("x-api-key", server.only[RECOMMEND])]) == OK
