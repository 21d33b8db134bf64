"""The serving process's lifecycle: the asyncio gRPC server and what runs behind it.

:class:`ServingApp` builds the components (recommender, catalog refresh, model watcher,
event collector, admin), serves them with health and reflection, and stops them in
order; with ``serving.api_keys_file`` set every call passes ``serving/auth.py``'s access
check first. :func:`serve` runs one until SIGTERM/SIGINT and exposes the metrics of
``serving/metrics.py`` (RPC latency and errors, Recommend fallbacks, the catalog's size
and age) on ``http://<metrics.host>:<metrics.serving_port>/metrics``.

On SIGTERM/SIGINT every health entry turns NOT_SERVING, then ``server.stop(grace)``
lets in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Coroutine
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from personalization.heap import observe_collections, settle_heap
from personalization.metrics import start_metrics_server
from personalization.model_registry import ModelRegistry
from personalization.redis_client import redis_client
from personalization.settings import Settings
from personalization.thread_names import NamedThread, name_current_thread
from personalization.v1 import catalog_pb2_grpc, recommender_pb2_grpc
from serving import metrics as serving_metrics
from serving.admin import AdminServicer
from serving.async_handlers import add_servicer
from serving.audit import AuditLog
from serving.auth import AccessControl
from serving.catalog import ItemCatalog
from serving.catalog_service import CatalogServicer
from serving.collector import EventCollector
from serving.exposure_log import ExposureLog
from serving.health import (
    COLLECTOR_SERVICE,
    ONLINE_STORE_HEALTH,
    RECOMMENDER_SERVICE,
    HealthState,
)
from serving.online_features import UserFeatureReader
from serving.propensity import ModelWatcher
from serving.recommender import Recommender
from serving.reflection import MethodAwarePool
from serving.servicers import CollectorServicer, RecommenderServicer

__all__ = ["ServingApp", "serve"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ServingApp:
    """The asyncio gRPC server and the components behind it; ``start`` / ``stop``.

    The server runs on its own event loop in a background thread, so callers (the CLI,
    tests, benchmarks) keep a synchronous API. Recommend runs on that loop; Collect,
    GetUserProfile (it waits for its audit record) and the Admin methods in a thread pool
    (see ``async_handlers``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        recommender: Recommender | None = None,
        collector: EventCollector | None = None,
        enable_collector: bool = True,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        # True only for serving/workers.py: N processes share the port on purpose.
        self._reuse_port = reuse_port
        cfg = settings.serving
        # First: a keys file that does not load stops the server before anything starts.
        self.access = AccessControl.from_settings(settings)
        self.health_servicer = health.aio.HealthServicer()
        self.health = HealthState(self.health_servicer)
        if collector is None and enable_collector:
            collector = EventCollector(
                settings, on_kafka_state=lambda ok: self.health.set(COLLECTOR_SERVICE, ok)
            )
        self.collector = collector
        if recommender is None:
            reader = UserFeatureReader(settings)
            # The watcher reads in the background: a client of its own, with the catalog's
            # patient timeout, not the request path's 50 ms (a busy Redis would otherwise
            # keep a new server from ever loading its first model version).
            registry_client = redis_client(
                settings.redis, request_path=False, timeout_s=cfg.catalog_read_timeout_s
            )
            registry = ModelRegistry(registry_client, settings.feast.project)
            recommender = Recommender(
                settings,
                reader,
                ItemCatalog(settings),
                on_store_state=lambda ok: self.health.set(ONLINE_STORE_HEALTH, ok),
                on_exposure=(
                    ExposureLog(collector, settings.kafka.exposures_topic).publish
                    if collector is not None
                    else None
                ),
                models=ModelWatcher(registry, cfg.model_refresh_s, owned_client=registry_client),
            )
        self.recommender = recommender
        self.admin: AdminServicer | None = None
        # The privacy audit trail (Admin actions, profile reads) needs Kafka, as the
        # collector does: a server without one serves profiles unaudited.
        self.audit: AuditLog | None = None
        if collector is not None:
            self.audit = AuditLog(settings)
            self.admin = AdminServicer(
                settings,
                collector,
                access=self.access.policy if self.access else None,
                audit=self.audit,
            )
        else:
            log.warning("profile reads are not audited: this server has no Kafka (no collector)")
        # Blocking methods (Kafka acks, audit writes) run here, off the event loop. Its
        # workers start from the loop's thread: named grpc_N, not after the loop.
        self._executor = futures.ThreadPoolExecutor(
            max_workers=cfg.max_workers, thread_name_prefix="grpc", initializer=name_current_thread
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = NamedThread(
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
            interceptors=[self.access.interceptor] if self.access is not None else None,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                # Fail loudly if the port is taken instead of sharing it with another server
                # (unless this is one of several workers, serving/workers.py).
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
            ],
        )
        names = add_servicer(
            server,
            recommender_pb2_grpc.add_RecommenderServicer_to_server,
            RecommenderServicer(
                self.settings,
                self.recommender,
                audit=self.audit,
                access=self.access.policy if self.access else None,
            ),
            executor=self._executor,
            inline=("Recommend", "SimilarItems"),
        )
        if self.collector is not None:
            names += add_servicer(
                server,
                recommender_pb2_grpc.add_CollectorServicer_to_server,
                CollectorServicer(self.settings, self.collector),
                executor=self._executor,
            )
            # Catalog writes wait for Kafka acks, like Collect: in the thread pool.
            names += add_servicer(
                server,
                catalog_pb2_grpc.add_CatalogServicer_to_server,
                CatalogServicer(self.settings, self.collector),
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
        # MethodAwarePool: ghz asks reflection for the method's symbol (serving/reflection.py).
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME], server, pool=MethodAwarePool()
        )
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_client_ca_file and not cfg.tls_cert_file:
                raise RuntimeError("serving.tls_client_ca_file needs serving.tls_cert_file")
            if cfg.tls_cert_file:
                # With a client CA, mutual TLS: the handshake refuses a client without
                # a certificate that CA signed, before any RPC (or API key) is looked at.
                client_ca = (
                    Path(cfg.tls_client_ca_file).read_bytes() if cfg.tls_client_ca_file else None
                )
                credentials = grpc.ssl_server_credentials(
                    [(Path(cfg.tls_key_file).read_bytes(), Path(cfg.tls_cert_file).read_bytes())],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
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
        if self.access is not None:
            self.access.start()
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
        if self.access is not None:
            self.access.stop()
        serving_metrics.CATALOG.unwatch(self.recommender.catalog)
        self.recommender.catalog.stop()
        if self.recommender.models is not None:
            self.recommender.models.stop()
        if self.admin is not None:
            self.admin.close()  # flushes the audit log it shares
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
    # while requests wait. Young collections keep their default spacing: each one is
    # a pause a request may wait behind, and small ones keep it short.
    settle_heap(young_collection_every=None)
    observe_collections()
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
