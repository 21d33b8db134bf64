"""One webhook endpoint: signed POSTs, timeouts, retries with backoff, a concurrency cap.

Each endpoint has its own thread pool of ``concurrency`` threads, which is its limit of
requests in flight; a thread keeps one HTTP/1.1 connection to the endpoint open between
requests (``http.client`` from the standard library: no client package needed). One
delivery is a loop of attempts:

- 2xx: delivered;
- no answer (connect error, reset, a socket operation slower than ``timeout_s``), 408,
  425, 429 and 5xx: retried after :func:`dispatcher.backoff.delay`, up to
  ``max_attempts`` attempts in all;
- any other status (a 4xx: the receiver refuses this request as it is): not retried.

A delivery that ends without a 2xx is *failed*; the process dead-letters it
(``dispatcher/dead_letters.py``). A delivery interrupted by a stop is *abandoned*: not
delivered and not dead-lettered, so its offset is not committed and it is sent again
after the restart (at least once).
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dispatcher import backoff
from dispatcher.envelope import Delivered, body, wanted
from dispatcher.signing import (
    ATTEMPT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TRIGGER_HEADER,
    sign,
)
from personalization.settings import WebhookSettings

__all__ = ["AttemptResult", "Endpoint", "Outcome", "load_secret", "retryable"]

log = logging.getLogger(__name__)

# Enough of an answer's body to log why it refused; the rest is read and dropped.
_ERROR_BODY_CHARS = 200
_RETRYABLE_4XX = frozenset({408, 425, 429})


def load_secret(hook: WebhookSettings, environ: Mapping[str, str] = os.environ) -> bytes:
    """The endpoint's signing secret from its file or environment variable."""
    if hook.secret_file:
        try:
            secret = Path(hook.secret_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"webhook {hook.name!r}: secret file: {exc}") from None
    else:
        secret = environ.get(hook.secret_env, "").strip().encode()
    if not secret:
        where = hook.secret_file or f"${hook.secret_env}"
        raise ValueError(f"webhook {hook.name!r}: empty signing secret ({where})")
    return secret


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status: int | None  # None: no HTTP answer
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retryable(result: AttemptResult) -> bool:
    status = result.status
    return status is None or status >= 500 or status in _RETRYABLE_4XX


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    attempts: int
    last_status: int | None
    last_error: str
    abandoned: bool = False  # stopped before it was settled

    @property
    def settled(self) -> bool:
        return not self.abandoned


class Endpoint:
    """Delivers to one webhook; :meth:`submit` returns a future of the :class:`Outcome`."""

    def __init__(
        self,
        hook: WebhookSettings,
        secret: bytes,
        *,
        on_retry: Callable[[str], None] = lambda _name: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hook = hook
        self.name = hook.name
        self._secret = secret
        self._on_retry = on_retry
        self._clock = clock
        url = urllib.parse.urlsplit(hook.url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(hook.concurrency, thread_name_prefix=f"hook-{hook.name}")
        self._in_flight = 0
        self._peak = 0
        self._count_lock = threading.Lock()

    def wants(self, rule: str) -> bool:
        return wanted(self.hook.rules, rule)

    @property
    def peak_in_flight(self) -> int:
        """Most requests this endpoint had in flight at once (tests check the cap)."""
        return self._peak

    def submit(self, delivered: Delivered, stop: threading.Event) -> Future[Outcome]:
        return self._pool.submit(self.deliver, delivered, stop)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def deliver(self, delivered: Delivered, stop: threading.Event) -> Outcome:
        payload = body(delivered)
        result = AttemptResult(None, "not attempted")
        for attempt in range(1, self.hook.max_attempts + 1):
            if attempt > 1:
                self._on_retry(self.name)
                wait = backoff.delay(attempt - 1, self.hook.backoff_base_s, self.hook.backoff_max_s)
                if stop.wait(wait):
                    return Outcome(False, attempt - 1, result.status, result.error, abandoned=True)
            if stop.is_set():
                return Outcome(False, attempt - 1, result.status, result.error, abandoned=True)
            result = self.post(payload, delivered, attempt)
            if result.ok:
                return Outcome(True, attempt, result.status, "")
            log.info(
                "webhook %s: %s attempt %d: %s",
                self.name,
                delivered.key,
                attempt,
                result.status or result.error,
            )
            if not retryable(result):
                return Outcome(False, attempt, result.status, result.error)
        return Outcome(False, self.hook.max_attempts, result.status, result.error)

    def post(self, payload: bytes, delivered: Delivered, attempt: int) -> AttemptResult:
        timestamp_s = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp_s),
            SIGNATURE_HEADER: sign(self._secret, timestamp_s, payload),
            IDEMPOTENCY_HEADER: delivered.key,
            ATTEMPT_HEADER: str(attempt),
            TRIGGER_HEADER: delivered.trigger.trigger,
        }
        with self._count_lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        try:
            return self._request(payload, headers)
        finally:
            with self._count_lock:
                self._in_flight -= 1

    def _request(self, payload: bytes, headers: dict[str, str]) -> AttemptResult:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # A timed-out or broken connection cannot be reused: the next attempt opens one.
            self._drop_connection()
            return AttemptResult(None, f"{type(exc).__name__}: {exc}"[:_ERROR_BODY_CHARS])
        if response.will_close:
            self._drop_connection()
        ok = 200 <= response.status < 300
        error = "" if ok else text[:_ERROR_BODY_CHARS].decode("utf-8", "replace")
        return AttemptResult(response.status, error)

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.hook.timeout_s)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
