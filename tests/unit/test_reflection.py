"""Server reflection answers for a method's symbol (what ghz asks), not only a service's."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalization.v1 import recommender_pb2  # noqa: F401  (registers the files)
from serving.reflection import MethodAwarePool

RECOMMEND = "personalization.v1.Recommender.Recommend"


def test_method_symbol_resolves_to_its_service_file() -> None:
    pool = MethodAwarePool()
    assert pool.FindFileContainingSymbol(RECOMMEND).name == "personalization/v1/recommender.proto"
    # Everything else is the wrapped pool's.
    assert pool.FindFileContainingSymbol("personalization.v1.RecommendRequest").name == (
        "personalization/v1/recommender.proto"
    )
    assert pool.FindServiceByName("personalization.v1.Recommender").methods_by_name["Recommend"]


@pytest.mark.parametrize(
    "name",
    ["personalization.v1.Recommender.NoSuchMethod", "personalization.v1.NoSuchService.Recommend"],
)
def test_unknown_symbols_stay_unknown(name: str) -> None:
    with pytest.raises(KeyError):
        MethodAwarePool().FindFileContainingSymbol(name)


async def _ask(target: str, symbol: str) -> reflection_pb2.ServerReflectionResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return response
    raise AssertionError("no reflection response")


def test_reflection_service_answers_the_method_symbol_with_dependencies() -> None:
    asyncio.run(_reflection_round_trip())


async def _reflection_round_trip() -> None:
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server()
    reflection.enable_server_reflection(
        ["personalization.v1.Recommender"], server, pool=MethodAwarePool()
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        response = await _ask(f"127.0.0.1:{port}", RECOMMEND)
        assert response.WhichOneof("message_response") == "file_descriptor_response", response
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b).name
            for b in response.file_descriptor_response.file_descriptor_proto
        ]
        # The service's file first, then what it imports (jhump/protoreflect needs both).
        assert files[0] == "personalization/v1/recommender.proto"
        assert "personalization/v1/events.proto" in files
        missing = await _ask(f"127.0.0.1:{port}", "personalization.v1.Recommender.Nope")
        assert missing.WhichOneof("message_response") == "error_response"
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    finally:
        await server.stop(None)
