"""Pacing a background thread of the serving process so the request loop keeps the GIL.

Recommend runs on the asyncio event loop. Every time the loop waits (its Redis round
trip, the network), another Python thread may take the GIL, and when the loop wakes it
waits up to the interpreter's switch interval (5 ms) to get it back, once per wait; the
requests queued behind it wait too. The catalog refresh (``serving/catalog.py``) runs
~100 ms of Python every ``catalog_refresh_s`` on a busy catalog: on the whole stack
(``bench stack``, 300 Recommend/s beside 1,000 events/s of ingest) that alone set
Recommend's p99 (17 ms with the refresh every 45 s, 80-100 ms every 2 s).

A paced thread calls its :class:`Pacer` inside its loops; after every ``work_s`` of
work the pacer sleeps ``rest_s``, so the loop waits at most about ``work_s`` for the GIL
and runs unopposed while the refresh rests. The refresh takes longer in wall time
(about ``(work_s + rest_s) / work_s`` times), which nobody waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pacer", "unpaced"]


def unpaced() -> None:
    """The pace of code run outside a paced thread (tests, tools): never rests."""


class Pacer:
    """``pacer()`` rests ``rest_s`` once ``work_s`` has passed since the last rest.

    Cheap enough to call per item (one clock read); ``restart()`` at the start of a
    burst of work, so the time the thread slept before does not count as work."""

    def __init__(
        self,
        work_s: float,
        rest_s: float,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if work_s <= 0 or rest_s < 0:
            raise ValueError(f"pacing needs work_s > 0 and rest_s >= 0, not {work_s}, {rest_s}")
        self._work_s = work_s
        self._rest_s = rest_s
        self._clock = clock
        self._sleep = sleep
        self._since = clock()
        self.rests = 0

    def restart(self) -> None:
        self._since = self._clock()

    def __call__(self) -> None:
        if self._rest_s and self._clock() - self._since >= self._work_s:
            self._sleep(self._rest_s)
            self.rests += 1
            self._since = self._clock()
