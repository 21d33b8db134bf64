"""Coalesced feature rows (pure): at most two rows per key per interval of processing time.

Rendering a row costs more than folding the event that changed it (a user's windows,
interests and segments; an item's co-visitation top list and context scores; then JSON
and a record out of Python), and in a burst or a replay a key changes many times a
second. So an operator renders a key's row at once when the key has been quiet for an
interval (the leading edge: a sparse stream costs what it did, and stays as fresh), and
folds the changes that follow within the interval into state only: one processing-time
timer at the interval's end renders the key's row from its state as it is then (the
trailing edge). The store sees the same final rows, at most one interval later, and a
key changed N times in an interval costs at most two renderings instead of N.

The schedule is the operator's memory of which keys rendered when, which have a timer
armed (so an event of an armed key costs no call into the JVM) and whether the key's
model factors changed meanwhile. It is not checkpointed: Flink checkpoints the timers,
and after a restore a timer that finds no entry renders everything the state holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Due", "RowSchedule"]

# Entries of keys quiet for longer than this many intervals are dropped in a sweep.
_SWEEP_AT = 50_000


@dataclass(frozen=True, slots=True)
class Due:
    """What a firing timer renders: ``learned`` is None when the schedule does not know
    (a timer restored from a checkpoint): render the factors' row if there are factors."""

    learned: bool | None


@dataclass(slots=True)
class RowSchedule:
    every_ms: int
    # key -> [quiet from (ms), timer armed at (ms, 0: none), factors changed since the row]
    pending: dict[str, list] = field(default_factory=dict)

    def render_now(self, key: str, now_ms: int) -> bool:
        """Whether a change of ``key`` at ``now_ms`` renders its row at once (the key was
        quiet for an interval) or is left to the interval's timer."""
        entry = self.pending.get(key)
        return entry is None or (entry[0] <= now_ms and not entry[1])

    def rendered(self, key: str, now_ms: int) -> None:
        """The row of ``key`` was rendered at ``now_ms``: changes within the next
        interval wait for its end."""
        if len(self.pending) >= _SWEEP_AT:
            self.pending = {k: e for k, e in self.pending.items() if e[1] or e[0] > now_ms}
        self.pending[key] = [now_ms + self.every_ms, 0, False]

    def defer(self, key: str, now_ms: int, learned: bool) -> int | None:
        """A change of ``key`` not rendered now: the timer to register (the end of the
        interval), or None when one is armed already."""
        entry = self.pending.get(key)
        if entry is None:  # not after render_now(); kept safe: a timer one interval on
            entry = self.pending[key] = [now_ms + self.every_ms, 0, False]
        entry[2] = entry[2] or learned
        if entry[1]:
            return None
        entry[1] = max(entry[0], now_ms + 1)
        return int(entry[1])

    def fire(self, key: str, timestamp: int) -> Due | None:
        """A timer of ``key`` fired at ``timestamp``: what to render, or None when it is
        not the key's armed timer (a newer one renders)."""
        entry = self.pending.get(key)
        if entry is None:
            return Due(learned=None)
        if not entry[1] or entry[1] > timestamp:
            return None
        learned = bool(entry[2])
        self.pending[key] = [timestamp + self.every_ms, 0, False]
        return Due(learned=learned)
