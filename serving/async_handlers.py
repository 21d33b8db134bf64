"""Synchronous servicer methods, served by the asyncio gRPC server.

Why asyncio: grpcio's thread-pool server hands every call from its polling thread to a
worker thread and back, and the two fight for the GIL. Measured on the 2-core machine
(ghz, closed loop, the same Recommend code): ~0.8 ms of server CPU per call with
``grpc.aio`` against ~1.5 ms with the thread pool, 1,260 against 640-800 calls/s.

The servicers stay plain synchronous classes (unit tests call them directly). This
module adapts their methods to async behaviours:

- methods named ``inline`` run on the event loop itself: they are short and CPU-bound
  (Recommend: one Redis round trip bounded by ``redis.socket_timeout_s``, and the reader
  stops touching a Redis that timed out for a while; see ``online_features``). Handing
  them to a thread would cost more than they do.
- the others (Collect waits for Kafka acks, Admin and GetUserProfile write audit
  records) run in a small thread pool so a slow broker cannot stall the loop.
- a sync ``context.abort(code, details)`` raises :class:`Aborted`; the async behaviour
  turns it into the call's status.
- a request whose bytes do not decode is answered INVALID_ARGUMENT (grpcio would say
  INTERNAL, which reads as a server fault; it is the caller's).
- every unary call is timed and counted for ``serving/metrics.py``.
- a call whose client went away (its deadline passed, or it cancelled) while the answer
  was being sent makes grpc's core log ``ExecuteBatchError`` with a traceback at ERROR
  (grpc/grpc#32551): that is the client's doing, not a server fault, so
  :class:`ClientGoneFilter` turns it into one DEBUG line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serving import metrics as serving_metrics

log = logging.getLogger(__name__)

AddServicer = Callable[[Any, Any], None]

# What grpc's asyncio server logs when core cannot send the answer of a finished
# handler (the call is already over on the client's side).
_CLIENT_GONE = "ExecuteBatchError raised in core by servicer method"


class ClientGoneFilter(logging.Filter):
    """Drops grpc's ERROR + traceback for answers to clients that already left; logs one
    DEBUG line instead (the call was counted when its handler finished)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_CLIENT_GONE):
            log.debug("answer not delivered, the client went away: %s", record.getMessage())
            return False
        return True


def quiet_client_gone() -> None:
    """Install :class:`ClientGoneFilter` on grpc's server logger (idempotent)."""
    core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, ClientGoneFilter) for f in core.filters):
        core.addFilter(ClientGoneFilter())


class Aborted(Exception):
    """Raised by :meth:`SyncContext.abort`: the call ends with ``code``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class SyncContext:
    """What a synchronous servicer method may ask of its context."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return str(self._context.peer())

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()


class _Undecodable:
    """Stands in for a request whose bytes are not the method's message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _CapturingServer:
    """Receives what a generated ``add_XServicer_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


def _lenient(decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if decode is None:
        return None

    def lenient_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return lenient_decode


def _adapt(
    service: str,
    method: str,
    handler: grpc.RpcMethodHandler,
    *,
    inline: bool,
    executor: Executor,
) -> grpc.RpcMethodHandler:
    behavior = handler.unary_unary
    if behavior is None:
        raise TypeError(f"{service}/{method}: only unary-unary methods are adapted")
    duration = serving_metrics.RPC_DURATION.labels(service, method)

    def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {request.error}")
        return behavior(request, SyncContext(context))

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        aborted: Aborted | None = None
        try:
            if inline:
                response = call(request, context)
            else:
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(executor, call, request, context)
        except Aborted as exc:
            aborted = exc
        except asyncio.CancelledError:
            serving_metrics.count_error(service, method, grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            log.exception("%s/%s failed", service, method)
            serving_metrics.count_error(service, method, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            # Before the status goes out: a caller that sees it sees the call counted.
            duration.observe(time.perf_counter() - started)
        if aborted is not None:
            serving_metrics.count_error(service, method, aborted.code)
            await context.abort(aborted.code, aborted.details)  # raises
        serving_metrics.count_response(response)
        return response

    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def add_servicer(
    server: grpc.aio.Server,
    add_to_server: AddServicer,
    servicer: Any,
    *,
    executor: Executor,
    inline: Iterable[str] = (),
) -> list[str]:
    """Register a synchronous ``servicer`` on the asyncio ``server``; returns its services.

    ``add_to_server`` is the generated ``add_XServicer_to_server``; methods named in
    ``inline`` run on the event loop, the others in ``executor``.
    """
    quiet_client_gone()
    capture = _CapturingServer()
    add_to_server(servicer, capture)
    on_loop = set(inline)
    for service, handlers in capture.services.items():
        adapted = {
            method: _adapt(service, method, handler, inline=method in on_loop, executor=executor)
            for method, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, adapted),))
    return list(capture.services)
