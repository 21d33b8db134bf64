"""Stop calling a dependency that keeps failing, and try it again a little later.

The request path reads Redis on the server's event loop (see ``async_handlers``): while
Redis is down or stalled, every read would cost up to ``redis.socket_timeout_s`` of the
loop. After ``failures`` failed calls in a row the breaker opens: callers fail at once
(and serve their fallback) for ``open_s``; then one call goes through as a probe, which
closes the breaker if it succeeds and reopens it if not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be >= 1")
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._last_error = ""

    def allow(self) -> bool:
        """May a call go out now? While open, only the first caller after ``open_s``."""
        if self._failures < self._threshold:
            return True
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                return False
            # One probe per open period: the others keep failing fast meanwhile.
            self._open_until = now + self._open_s
            return True

    def succeeded(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._open_until = 0.0

    def failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = error
            if self._failures >= self._threshold:
                self._open_until = self._clock() + self._open_s

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold

    @property
    def last_error(self) -> str:
        return self._last_error
