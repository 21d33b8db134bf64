"""Sync servicers on the asyncio server: statuses, undecodable requests, metrics, threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from personalization.v1 import recommender_pb2, recommender_pb2_grpc
from serving.async_handlers import add_servicer

SERVICE = "personalization.v1.Recommender"


class Servicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self) -> None:
        self.threads: dict[str, str] = {}

    def Recommend(self, request: Any, context: Any) -> recommender_pb2.RecommendResponse:
        self.threads["Recommend"] = threading.current_thread().name
        if request.user_id == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is bad")
        if request.user_id == "crash":
            raise RuntimeError("boom")
        return recommender_pb2.RecommendResponse(
            strategy="s", fallback_reason="unit_async_reason" if request.user_id == "new" else ""
        )

    def GetUserProfile(self, request: Any, context: Any) -> recommender_pb2.UserProfile:
        self.threads["GetUserProfile"] = threading.current_thread().name
        return recommender_pb2.UserProfile(user_id=request.user_id, found=True)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture()
def served() -> Iterator[tuple[Servicer, grpc.Channel]]:
    servicer = Servicer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    executor = ThreadPoolExecutor(2, thread_name_prefix="test-pool")

    async def build() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        add_servicer(
            server,
            recommender_pb2_grpc.add_RecommenderServicer_to_server,
            servicer,
            executor=executor,
            inline=("Recommend",),
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        executor.shutdown()


def test_answers_and_runs_inline_methods_on_the_loop(served: tuple[Servicer, grpc.Channel]):
    servicer, channel = served
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    assert stub.Recommend(recommender_pb2.RecommendRequest(user_id="u"), timeout=5).strategy == "s"
    profile = stub.GetUserProfile(recommender_pb2.GetUserProfileRequest(user_id="u"), timeout=5)
    assert profile.found and profile.user_id == "u"
    assert servicer.threads["Recommend"] == "test-loop"
    assert servicer.threads["GetUserProfile"].startswith("test-pool")


def test_abort_becomes_the_status_and_is_counted(served: tuple[Servicer, grpc.Channel]):
    _, channel = served
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    labels = {"service": SERVICE, "method": "Recommend"}
    before = _value("pz_serving_rpc_errors_total", code="INVALID_ARGUMENT", **labels)
    timed = _value("pz_serving_rpc_duration_seconds_count", **labels)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(recommender_pb2.RecommendRequest(user_id="bad"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "user_id is bad"
    assert _value("pz_serving_rpc_errors_total", code="INVALID_ARGUMENT", **labels) == before + 1
    assert _value("pz_serving_rpc_duration_seconds_count", **labels) == timed + 1


def test_crash_is_unknown_and_the_server_keeps_serving(served: tuple[Servicer, grpc.Channel]):
    _, channel = served
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    labels = {"service": SERVICE, "method": "Recommend"}
    before = _value("pz_serving_rpc_errors_total", code="UNKNOWN", **labels)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(recommender_pb2.RecommendRequest(user_id="crash"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert _value("pz_serving_rpc_errors_total", code="UNKNOWN", **labels) == before + 1
    assert stub.Recommend(recommender_pb2.RecommendRequest(user_id="u"), timeout=5).strategy


def test_undecodable_request_is_invalid_argument(served: tuple[Servicer, grpc.Channel]):
    _, channel = served
    raw = channel.unary_unary(f"/{SERVICE}/Recommend")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable request" in (err.value.details() or "")


def test_fallback_answers_are_counted(served: tuple[Servicer, grpc.Channel]):
    _, channel = served
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    before = _value("pz_serving_fallbacks_total", reason="unit_async_reason")
    stub.Recommend(recommender_pb2.RecommendRequest(user_id="new"), timeout=5)
    assert _value("pz_serving_fallbacks_total", reason="unit_async_reason") == before + 1


def test_an_answer_to_a_client_that_left_is_not_logged_as_a_server_error():
    # Regression (e2e fuzz test under load): a short client deadline expiring while the
    # answer was being sent made grpc log ExecuteBatchError + traceback at ERROR.
    import logging

    from serving.async_handlers import ClientGoneFilter, quiet_client_gone

    gone = logging.LogRecord(
        "grpc._cython.cygrpc",
        logging.ERROR,
        "server.pyx.pxi",
        689,
        "ExecuteBatchError raised in core by servicer method [%s]",
        ("/personalization.v1.Collector/Collect",),
        None,
    )
    other = logging.LogRecord(
        "grpc._cython.cygrpc",
        logging.ERROR,
        "server.pyx.pxi",
        700,
        "Unexpected [%s] raised by servicer method [%s]",
        ("ValueError", "/x/Y"),
        None,
    )
    f = ClientGoneFilter()
    assert f.filter(gone) is False
    assert f.filter(other) is True
    quiet_client_gone()
    quiet_client_gone()
    core = logging.getLogger("grpc._cython.cygrpc")
    assert sum(isinstance(x, ClientGoneFilter) for x in core.filters) == 1
