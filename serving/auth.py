"""Access control of every RPC: API keys with scopes, checked before any handler runs.

With ``serving.api_keys_file`` set, :class:`AccessInterceptor` asks the
:class:`~personalization.access.AccessPolicy` about each call (which methods need which
scope, how keys are presented and verified: see ``personalization/access.py``):

- no key, an unknown key or a malformed credential: UNAUTHENTICATED;
- a known key without the method's scope: PERMISSION_DENIED;
- whatever the metadata holds (huge or non-ASCII values, repeated headers, binary
  ``-bin`` headers), never INTERNAL: a policy that raised refuses the call.

:class:`KeysFileWatcher` re-reads the file in a background thread when its inode, mtime
or size changes (looked at every ``serving.api_keys_reload_s``), so the request path only
reads the current keys. A file that does not parse keeps the previous keys and logs an
error; at start-up it stops the server from starting.

With the setting empty, no interceptor is installed and every RPC is open, as before;
the server logs one WARNING saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from personalization.access import (
    AccessPolicy,
    Decision,
    Outcome,
    load_keys_file,
)
from personalization.keys_watcher import KeysFileWatcher, file_signature
from personalization.settings import Settings
from serving import metrics as serving_metrics

__all__ = [
    "AccessControl",
    "AccessInterceptor",
    "KeysFileWatcher",
    "actor_or_abort",
    "status_code",
]

log = logging.getLogger(__name__)

_UNREADABLE = Decision(Outcome.UNAUTHENTICATED, "credentials could not be read")


def status_code(decision: Decision) -> grpc.StatusCode:
    if decision.outcome is Outcome.ALLOWED:
        return grpc.StatusCode.OK
    if decision.outcome is Outcome.PERMISSION_DENIED:
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAUTHENTICATED


def actor_or_abort(access: AccessPolicy, context: grpc.ServicerContext, scope: str) -> str:
    """The actor (``key:<id>``) of a call the interceptor let through, found again from
    its metadata (a cache hit, no second hash), for audit records; or abort with the
    policy's status, so a servicer is safe on its own too."""
    decision = access.authorize(context.invocation_metadata(), scope)
    if decision.allowed and decision.key is not None:
        return decision.key.actor
    context.abort(status_code(decision), decision.reason)
    raise AssertionError("context.abort returned")  # it raises


def _refusal(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with ``code``.

    No deserializer: the refused request's bytes are never decoded.
    """

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through to its handler only if the policy allows it."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = str(handler_call_details.method)
        try:
            decision = self._policy.decide(handler_call_details.invocation_metadata, method)
        except Exception:
            log.exception("access check of %s failed; refusing the call", method)
            decision = _UNREADABLE
        if decision.allowed:
            return await continuation(handler_call_details)
        code = status_code(decision)
        # Only methods of the table are counted: the method name comes from the caller.
        if self._policy.requirement(method) is not None:
            service, _, name = method.lstrip("/").partition("/")
            serving_metrics.count_error(service, name, code)
        # Refuse with a handler of the method's own kind (unary or streaming); an unknown
        # method is refused the same way rather than told apart as UNIMPLEMENTED.
        return _refusal(await continuation(handler_call_details), code, decision.reason)


class AccessControl:
    """The policy, its file watcher and the interceptor of one server."""

    def __init__(self, policy: AccessPolicy, watcher: KeysFileWatcher) -> None:
        self.policy = policy
        self.watcher = watcher
        self.interceptor = AccessInterceptor(policy)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessControl | None:
        """None (and a WARNING) when ``serving.api_keys_file`` is empty; raises
        :class:`KeysFileError` when the file is missing or invalid."""
        cfg = settings.serving
        if not cfg.api_keys_file:
            log.warning(
                "access control is off (serving.api_keys_file is empty): every RPC is open "
                "to anyone who can reach %s:%s",
                cfg.host,
                cfg.port,
            )
            return None
        path = Path(cfg.api_keys_file)
        loaded = file_signature(path)  # before reading: a change while reading is seen later
        keys = load_keys_file(path)
        policy = AccessPolicy(
            keys,
            admin_token=settings.privacy.admin_token,
            reflection_requires_key=cfg.reflection_requires_key,
        )
        log.info(
            "access control on: %d api keys from %s%s",
            len(keys),
            path,
            " (and the legacy admin token for Admin)" if settings.privacy.admin_token else "",
        )
        return cls(policy, KeysFileWatcher(path, policy, cfg.api_keys_reload_s, loaded=loaded))

    def start(self) -> None:
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
