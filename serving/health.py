"""gRPC health (``grpc.health.v1``) of the serving process, one entry per concern.

- ``""`` and ``personalization.v1.Recommender``: SERVING while the process runs. A
  Redis outage does not make the recommender NOT_SERVING, because it still answers
  (trending from the in-process catalog); draining every replica behind a load balancer
  for a shared-Redis outage would turn degraded answers into no answers.
- ``personalization.online_store``: Redis reachability, from the catalog refresh and
  from request-path reads. Dashboards and alerts watch this one.
- ``personalization.v1.Collector``: NOT_SERVING while librdkafka reports all brokers
  down or the last batch was not acknowledged; SERVING again after the next ack.

On SIGTERM/SIGINT every entry turns NOT_SERVING (``ServingApp.stop``).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from grpc_health.v1 import health, health_pb2

from personalization.v1 import recommender_pb2

__all__ = [
    "ADMIN_SERVICE",
    "COLLECTOR_SERVICE",
    "ONLINE_STORE_HEALTH",
    "RECOMMENDER_SERVICE",
    "HealthState",
]

log = logging.getLogger(__name__)

_SERVICES = recommender_pb2.DESCRIPTOR.services_by_name
RECOMMENDER_SERVICE = _SERVICES["Recommender"].full_name
COLLECTOR_SERVICE = _SERVICES["Collector"].full_name
ADMIN_SERVICE = _SERVICES["Admin"].full_name
ONLINE_STORE_HEALTH = "personalization.online_store"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    """Health entries of the asyncio health servicer, settable from any thread.

    Writes reach the servicer only on change (every Recommend reports the store's
    state) and always on the server's event loop, where the servicer lives.
    """

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._servicer = servicer
        self._lock = threading.Lock()
        self._state: dict[str, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Entries set before the loop runs are written once it does."""
        with self._lock:
            self._loop = loop
            pending = dict(self._state)
        for service, ok in pending.items():
            self._write(service, ok)

    def set(self, service: str, ok: bool) -> None:
        if self._state.get(service) is ok:
            return
        with self._lock:
            if self._state.get(service) is ok:
                return
            self._state[service] = ok
        self._write(service, ok)
        log.info("health %s -> %s", service or '""', "SERVING" if ok else "NOT_SERVING")

    def _write(self, service: str, ok: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        status = _SERVING if ok else _NOT_SERVING
        coroutine = self._servicer.set(service, status)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(coroutine)
        else:
            asyncio.run_coroutine_threadsafe(coroutine, loop)

    def get(self, service: str) -> bool | None:
        return self._state.get(service)
