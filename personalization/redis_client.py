"""The one place a Redis client is built from settings.

With ``redis.cluster_nodes`` set the client is a :class:`redis.cluster.RedisCluster`
(it learns the slot map from any reachable node and follows MOVED/ASK redirects); else a
plain :class:`redis.Redis` on ``host:port``. Both get the same timeout/retry policy.

What stays cluster-safe: every command we send names one key (Feast's layout is one hash
per entity key, so a user's row is one HMGET; the writer's HSETs, the item index and the
model registry's keys each hash to one slot -- the registry's Lua script uses a hash tag
so its three keys share one). Pipelines are non-transactional (``transaction=False``):
RedisCluster splits them per node. ``scan_iter`` and ``flushdb`` on a RedisCluster go to
every master (redis-py >= 5).
"""

from __future__ import annotations

from typing import cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from personalization.settings import RedisSettings

__all__ = ["REDIS_ERRORS", "redis_client", "single_node_client"]

# What a Redis call can raise when the store is down, stalled or (cluster) being
# reconfigured. ``RedisClusterException`` (no reachable node, slot not covered) is not a
# ``RedisError`` in redis-py, so a handler that means "the store failed" catches both.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def redis_client(
    cfg: RedisSettings, *, request_path: bool = True, timeout_s: float | None = None
) -> redis.Redis:
    """A pooled client for ``cfg``: a cluster client when ``cfg.cluster_nodes`` is set.

    On the request path (the default) it uses the settings' short socket timeouts, so a
    dead Redis fails fast instead of hanging a call past its deadline, and no retries (the
    request has a deadline and a fallback; a retry only adds latency). Background work
    (the writer, tooling) passes ``request_path=False`` and its own ``timeout_s``
    (``None``: wait as long as it takes; the caller retries with backoff).

    A :class:`RedisCluster` is typed as ``redis.Redis`` here: callers use only commands
    both clients offer with the same signatures (single-key commands, non-transactional
    pipelines, ``register_script``, ``scan_iter``, ``ping``, ``close``).
    """
    if cfg.cluster_nodes:
        return cast(
            "redis.Redis", cluster_client(cfg, request_path=request_path, timeout_s=timeout_s)
        )
    return single_node_client(cfg, request_path=request_path, timeout_s=timeout_s)


def single_node_client(
    cfg: RedisSettings, *, request_path: bool = True, timeout_s: float | None = None
) -> redis.Redis:
    """A client of the single node at ``cfg.host:cfg.port``, whatever ``cluster_nodes``
    says (the local single-node service probes its own server with it)."""
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


def cluster_client(
    cfg: RedisSettings, *, request_path: bool = True, timeout_s: float | None = None
) -> RedisCluster:
    """A :class:`RedisCluster` over ``cfg.cluster_nodes``.

    Request path: the short socket timeouts and no retry after a connection error or a
    CLUSTERDOWN (``cluster_error_retry_attempts=0``; redirects are still followed), so a
    dead master costs one fast failure and the caller serves its fallback. Background:
    ``timeout_s`` and redis-py's default retries, which re-learn the slot map between
    attempts (a restarted or failed-over master is found again).
    """
    nodes = [ClusterNode(host, port) for host, port in cfg.startup_nodes]
    if request_path:
        return RedisCluster(
            startup_nodes=nodes,
            password=cfg.password,
            socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=cfg.connect_timeout_s,
            retry_on_timeout=False,
            cluster_error_retry_attempts=0,
        )
    return RedisCluster(
        startup_nodes=nodes,
        password=cfg.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
