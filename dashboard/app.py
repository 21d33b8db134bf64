"""The dashboard process: scrape the metrics endpoints every second, serve the page.

    GET /             the page (hand-written JS drawing on <canvas>; no CDN, no deps)
    GET /api/series   the last ``metrics.history_s`` seconds of points as JSON
                      (``?since=<t>`` returns only newer points)
    GET /healthz      "ok"

Scraping happens here, server-side (the browser talks to one origin only), with
``prometheus_client.parser``; see ``series.py`` for the arithmetic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dashboard import series
from dashboard.page import PAGE
from personalization.settings import Settings

log = logging.getLogger(__name__)

Fetch = Callable[[str, float], str]


def metrics_urls(settings: Settings) -> dict[str, str]:
    """Endpoint name -> /metrics URL, for every endpoint that is switched on."""
    m = settings.metrics
    ports = {series.JOB: m.job_port, series.WRITER: m.writer_port, series.SERVING: m.serving_port}
    return {name: f"http://{m.host}:{port}/metrics" for name, port in ports.items() if port > 0}


def http_fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


class Dashboard:
    """Scraper thread + HTTP server; ``start()`` / ``stop()``; ``url``."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        fetch: Fetch = http_fetch,
    ) -> None:
        m = settings.metrics
        self.settings = settings
        self.urls = metrics_urls(settings)
        self.interval_s = m.scrape_interval_s
        self.history = series.History(
            history_s=m.history_s,
            interval_s=m.scrape_interval_s,
            rate_window_s=m.rate_window_s,
            quantile_window_s=m.quantile_window_s,
        )
        self.errors: dict[str, str] = {}
        self._fetch = fetch
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.httpd = ThreadingHTTPServer(
            (host or m.host, m.dashboard_port if port is None else port), self._handler()
        )
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    # --- scraping --------------------------------------------------------------------

    def scrape_once(self) -> dict[str, Any]:
        endpoints: dict[str, series.Samples | None] = {}
        timeout = max(0.2, min(2.0, self.interval_s * 0.8))
        for name, url in self.urls.items():
            try:
                endpoints[name] = series.parse_samples(self._fetch(url, timeout))
                self.errors.pop(name, None)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                endpoints[name] = None
                self.errors[name] = f"{type(exc).__name__}: {exc}"
        with self._lock:
            return self.history.add(series.Scrape(time.time(), endpoints))

    def _scrape_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.scrape_once()
            except Exception:  # never let one bad scrape end the loop
                log.exception("scrape failed")
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def series_json(self, since: float | None = None) -> dict[str, Any]:
        with self._lock:
            payload = self.history.to_json(since)
        payload["endpoints"] = {
            name: {"url": url, "error": self.errors.get(name, "")}
            for name, url in self.urls.items()
        }
        payload["now"] = time.time()
        return payload

    # --- HTTP ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif parts.path == "/api/series":
                    since = parse_qs(parts.query).get("since", [""])[0]
                    try:
                        since_t = float(since) if since else None
                    except ValueError:
                        since_t = None
                    body = json.dumps(dashboard.series_json(since_t), allow_nan=False)
                    self._send(200, "application/json", body.encode())
                elif parts.path == "/healthz":
                    self._send(200, "text/plain", b"ok")
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        return Handler

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Dashboard:
        for target, name in ((self._scrape_loop, "scrape"), (self.httpd.serve_forever, "http")):
            thread = threading.Thread(target=target, name=f"dashboard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("dashboard on %s scraping %s", self.url, ", ".join(self.urls.values()))
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)


def serve(settings: Settings, *, port: int | None = None, block: bool = True) -> Dashboard:
    """Run the dashboard; with ``block`` until SIGTERM/SIGINT."""
    import signal

    dashboard = Dashboard(settings, port=port).start()
    if not block:
        return dashboard
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    print(f"dashboard: {dashboard.url}", flush=True)
    while not stop.wait(1.0):
        pass
    dashboard.stop()
    return dashboard


def main(argv: list[str] | None = None) -> None:
    import argparse

    from personalization.settings import load_settings

    parser = argparse.ArgumentParser(description="live metrics dashboard")
    parser.add_argument("--port", type=int, default=None, help="default: metrics.dashboard_port")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(load_settings(), port=args.port)
