"""gRPC wiring: Recommender and Collector services, health, reflection, shutdown.

Status codes:

- INVALID_ARGUMENT: empty ``user_id``, ``k`` < 0 or > ``serving.max_k``; a request whose
  bytes do not decode as the method's message (garbage, invalid UTF-8 in a string).
- RESOURCE_EXHAUSTED: a Collect batch larger than ``serving.max_batch_events``; any
  request larger than ``serving.max_message_bytes`` (refused by gRPC itself).
- Collect answers OK for a batch with invalid events: they are reported per index in
  ``rejected`` and dead-lettered (see ``serving/collector.py``).
- UNAVAILABLE: Kafka did not acknowledge a Collect batch in time; GetUserProfile while
  Redis is unreachable (a profile has no meaningful fallback).
- Unknown users are not NOT_FOUND: Recommend answers with the trending fallback and
  GetUserProfile with ``found=false``.

Health (``grpc.health.v1``), one entry per concern:

- ``""`` and ``personalization.v1.Recommender``: SERVING while the process runs. A
  Redis outage does not make the recommender NOT_SERVING, because it still answers
  (trending from the in-process catalog); draining every replica behind a load balancer
  for a shared-Redis outage would turn degraded answers into no answers.
- ``personalization.online_store``: Redis reachability, from the catalog refresh and
  from request-path reads. Dashboards and alerts watch this one.
- ``personalization.v1.Collector``: NOT_SERVING while librdkafka reports all brokers
  down or the last batch was not acknowledged; SERVING again after the next ack.

Metrics (``serving/metrics.py``): ``serving/async_handlers.py`` times every unary RPC and counts
non-OK statuses and Recommend fallbacks; ``serve()`` exposes them with the catalog's
size and age on ``http://<metrics.host>:<metrics.serving_port>/metrics``.

On SIGTERM/SIGINT every entry turns NOT_SERVING, then ``server.stop(grace)`` lets
in-flight calls finish.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from personalization.exposures import Exposure
from personalization.metrics import start_metrics_server
from personalization.model_registry import ModelRegistry
from personalization.privacy import pseudonymizer
from personalization.settings import Settings, load_settings
from personalization.v1 import (
    events_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
)
from serving import metrics as serving_metrics
from serving.admin import AdminServicer
from serving.async_handlers import add_servicer
from serving.catalog import ItemCatalog
from serving.collector import CollectUnavailable, EventCollector
from serving.online_features import StoreUnavailable, UserFeatureReader, UserFeatures
from serving.propensity import ModelWatcher
from serving.recommender import Recommendation, Recommender

log = logging.getLogger(__name__)

_SERVICES = recommender_pb2.DESCRIPTOR.services_by_name
RECOMMENDER_SERVICE = _SERVICES["Recommender"].full_name
COLLECTOR_SERVICE = _SERVICES["Collector"].full_name
ADMIN_SERVICE = _SERVICES["Admin"].full_name
ONLINE_STORE_HEALTH = "personalization.online_store"

_T = TypeVar("_T")

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


def profile_message(
    user_id: str, features: UserFeatures | None, now_ms: int
) -> recommender_pb2.UserProfile:
    if features is None:
        return recommender_pb2.UserProfile(user_id=user_id, found=False, features_age_ms=-1)
    return recommender_pb2.UserProfile(
        user_id=user_id,
        found=True,
        counts=features.counts,
        interests=[
            recommender_pb2.CategoryInterest(category=c, score=s) for c, s in features.interests
        ],
        recent_items=features.recent_items,
        cart_items=features.cart_items,
        purchased_items=features.purchased_items,
        session_count=features.session_count,
        session_events=features.session_events,
        session_duration_s=features.session_duration_s,
        last_seen_ms=features.last_seen_ms,
        recency_days=features.recency_days(now_ms),
        frequency=features.frequency,
        monetary=features.monetary,
        segments=features.segments,
        last_device=features.device,
        last_country=features.country,
        features_age_ms=features.features_age_ms,
        consent=features.consent,
    )


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, settings: Settings, recommender: Recommender) -> None:
        self._recommender = recommender
        # Features are stored under the pseudonym the job derived (privacy.hmac_secret).
        self._stored_id = pseudonymizer(settings.privacy.hmac_secret)
        self._default_k = settings.serving.default_k
        self._max_k = settings.serving.max_k

    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if request.k < 0 or request.k > self._max_k:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"k must be 0..{self._max_k} (0 = default)"
            )
        k = request.k or self._default_k
        rec = self._recommender.recommend(
            self._stored_id(user_id), k, exclude=request.exclude_item_ids
        )
        response = recommender_pb2.RecommendResponse(
            strategy=rec.strategy,
            personalized=rec.personalized,
            fallback_reason=rec.fallback_reason,
            recommendation_id=rec.recommendation_id,
            features_age_ms=rec.features_age_ms,
            experiment=rec.experiment,
            variant=rec.variant,
        )
        add = response.items.add  # in place: cheaper than building and copying messages
        for item in rec.items:
            add(
                item_id=item.item_id,
                score=item.score,
                reason=item.reason,
                category=item.category,
                source=item.source,
            )
        return response

    def GetUserProfile(
        self, request: recommender_pb2.GetUserProfileRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UserProfile:
        user_id = request.user_id.strip()
        if not user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        try:
            features = self._recommender.user_features(self._stored_id(user_id))
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return profile_message(user_id, features, int(time.time() * 1000))


class CollectorServicer(recommender_pb2_grpc.CollectorServicer):
    def __init__(self, settings: Settings, collector: EventCollector) -> None:
        self._collector = collector
        self._max_batch = settings.serving.max_batch_events

    def Collect(
        self, request: recommender_pb2.CollectRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.CollectResponse:
        if len(request.events) > self._max_batch:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(request.events)} events > max batch {self._max_batch}",
            )
        events: list[events_pb2.Event] = list(request.events)
        try:
            result = self._collector.collect(events)
        except CollectUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return recommender_pb2.CollectResponse(
            accepted=result.accepted,
            rejected=[
                recommender_pb2.RejectedEvent(index=index, reason=reason)
                for index, reason in result.rejected
            ],
        )


class ServingApp:
    """The asyncio gRPC server and the components behind it; ``start`` / ``stop``.

    The server runs on its own event loop in a background thread, so callers (the CLI,
    tests, benchmarks) keep a synchronous API. Recommend and GetUserProfile run on that
    loop; Collect and the Admin methods in a thread pool (see ``async_handlers``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        recommender: Recommender | None = None,
        collector: EventCollector | None = None,
        enable_collector: bool = True,
    ) -> None:
        self.settings = settings
        cfg = settings.serving
        self.health_servicer = health.aio.HealthServicer()
        self.health = HealthState(self.health_servicer)
        if collector is None and enable_collector:
            collector = EventCollector(
                settings, on_kafka_state=lambda ok: self.health.set(COLLECTOR_SERVICE, ok)
            )
        self.collector = collector
        if recommender is None:
            reader = UserFeatureReader(settings)
            registry = ModelRegistry(reader.client, settings.feast.project)
            recommender = Recommender(
                settings,
                reader,
                ItemCatalog(settings, reader.client),
                on_store_state=lambda ok: self.health.set(ONLINE_STORE_HEALTH, ok),
                on_exposure=self._publish_exposure if collector is not None else None,
                models=ModelWatcher(registry, cfg.model_refresh_s),
            )
        self.recommender = recommender
        self.admin: AdminServicer | None = None
        if collector is not None:
            self.admin = AdminServicer(settings, collector)
        # Blocking methods (Kafka acks, audit writes) run here, off the event loop.
        self._executor = futures.ThreadPoolExecutor(
            max_workers=cfg.max_workers, thread_name_prefix="grpc"
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-loop", daemon=True
        )
        self._loop_thread.start()
        self.health.bind(self._loop)
        try:
            self.server, self.port = self._on_loop(self._build_server())
        except BaseException:
            self._close_loop()
            raise
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        self._stopped = threading.Event()

    def _on_loop(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _build_server(self) -> tuple[grpc.aio.Server, int]:
        cfg = self.settings.serving
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                # Fail loudly if the port is taken instead of sharing it with another server.
                ("grpc.so_reuseport", 0),
            ],
        )
        names = add_servicer(
            server,
            recommender_pb2_grpc.add_RecommenderServicer_to_server,
            RecommenderServicer(self.settings, self.recommender),
            executor=self._executor,
            inline=("Recommend", "GetUserProfile"),
        )
        if self.collector is not None:
            names += add_servicer(
                server,
                recommender_pb2_grpc.add_CollectorServicer_to_server,
                CollectorServicer(self.settings, self.collector),
                executor=self._executor,
            )
            assert self.admin is not None
            names += add_servicer(
                server,
                recommender_pb2_grpc.add_AdminServicer_to_server,
                self.admin,
                executor=self._executor,
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME], server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert_file:
                credentials = grpc.ssl_server_credentials(
                    [(Path(cfg.tls_key_file).read_bytes(), Path(cfg.tls_cert_file).read_bytes())]
                )
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind {address}: {exc}") from exc
        if port == 0:
            raise RuntimeError(f"cannot bind {address}")
        return server, port

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        if not self._loop_thread.is_alive():
            self._loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _publish_exposure(self, rec: Recommendation, user_id: str, now_ms: int) -> None:
        """One exposure record per answer, for A/B attribution in the job."""
        assert self.collector is not None
        exposure = Exposure(
            rec_id=rec.recommendation_id,
            user_id=user_id,
            experiment=rec.experiment,
            variant=rec.variant,
            strategy=rec.strategy,
            items=tuple(item.item_id for item in rec.items),
            time_ms=now_ms,
            categories=tuple(item.category for item in rec.items),
            features=rec.logged_features,
        )
        self.collector.publish(self.settings.kafka.exposures_topic, user_id, exposure.to_json())

    @property
    def target(self) -> str:
        return f"{self.settings.serving.host}:{self.port}"

    def _watch_catalog(self) -> None:
        # The catalog refresh touches Redis every catalog_refresh_s, so its outcome is
        # the store's heartbeat even when no requests arrive.
        while not self._stop_monitor.wait(self.settings.serving.catalog_refresh_s):
            self.health.set(ONLINE_STORE_HEALTH, self.recommender.catalog.health().ok)
            serving_metrics.CATALOG.observe_refreshes()

    def start(self) -> ServingApp:
        catalog = self.recommender.catalog
        try:
            catalog.refresh_once()  # first answers should not come from an empty catalog
        except Exception as exc:
            log.warning("initial catalog load failed (serving degraded): %s", exc)
        catalog.start()
        if self.recommender.models is not None:
            self.recommender.models.start()
        serving_metrics.CATALOG.watch(catalog)
        self.health.set("", True)
        self.health.set(RECOMMENDER_SERVICE, True)
        self.health.set(ONLINE_STORE_HEALTH, catalog.health().ok)
        if self.collector is not None:
            self.health.set(COLLECTOR_SERVICE, True)
        self._monitor = threading.Thread(target=self._watch_catalog, daemon=True)
        self._monitor.start()
        self._on_loop(self.server.start())
        log.info("serving on %s", self.target)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.serving.shutdown_grace_s if grace_s is None else grace_s
        self._on_loop(self.health_servicer.enter_graceful_shutdown())
        self._on_loop(self.server.stop(grace))
        self._close_loop()
        self._stop_monitor.set()
        serving_metrics.CATALOG.unwatch(self.recommender.catalog)
        self.recommender.catalog.stop()
        if self.recommender.models is not None:
            self.recommender.models.stop()
        if self.admin is not None:
            self.admin.close()
        if self.collector is not None:
            self.collector.close(timeout_s=grace)
        self.recommender.reader.close()

    def wait(self) -> None:
        """Block until :meth:`stop` has run."""
        self._stopped.wait()


def serve(settings: Settings, block: bool = True, **kwargs: Any) -> ServingApp:
    """Start serving; with ``block`` run until SIGTERM/SIGINT, then shut down gracefully."""
    app = ServingApp(settings, **kwargs).start()
    # Everything loaded so far (modules, the first catalog) lives as long as the
    # process: keep it out of the cyclic GC's full collections, which otherwise walk it
    # while requests wait.
    gc.collect()
    gc.freeze()
    start_metrics_server(
        settings.metrics.host, settings.metrics.serving_port, what="serving metrics"
    )
    if not block:
        return app
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    while not stop.wait(1.0):
        pass
    log.info("shutting down (grace %.1fs)", settings.serving.shutdown_grace_s)
    app.stop()
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="personalization gRPC server")
    parser.add_argument(
        "--no-collector", action="store_true", help="serve recommendations only (no Kafka)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(load_settings(), block=True, enable_collector=not args.no_collector)


if __name__ == "__main__":
    main()
