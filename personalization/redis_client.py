"""The one place a Redis client is built from settings."""

from __future__ import annotations

import redis

from personalization.settings import RedisSettings

__all__ = ["redis_client"]


def redis_client(
    cfg: RedisSettings, *, request_path: bool = True, timeout_s: float | None = None
) -> redis.Redis:
    """A pooled client for ``cfg``.

    On the request path (the default) it uses the settings' short socket timeouts, so a
    dead Redis fails fast instead of hanging a call past its deadline, and no retries (the
    request has a deadline and a fallback; a retry only adds latency). Background work
    (the writer, tooling) passes ``request_path=False`` and its own ``timeout_s``
    (``None``: wait as long as it takes; the caller retries with backoff).
    """
    if request_path:
        return redis.Redis(
            host=cfg.host,
            port=cfg.port,
            db=cfg.db,
            password=cfg.password,
            socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=cfg.connect_timeout_s,
            retry_on_timeout=False,
        )
    return redis.Redis(
        host=cfg.host,
        port=cfg.port,
        db=cfg.db,
        password=cfg.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
