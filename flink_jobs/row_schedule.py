"""Coalesced feature rows (pure): at most one row per key per interval of processing time.

Rendering a row costs more than folding the event that changed it (for an item: its
co-visitation top list, context scores, rounding, JSON), and a hot key changes many
times a second in a burst or a replay. So the operator folds every event into state at
once but renders the key's row on a processing-time timer, at the end of the interval
the first change fell in, from the state as it is then: the store sees the same final
rows, at most one interval later, and a key changed N times in the interval costs one
rendering instead of N.

The schedule only remembers which keys have a timer armed (so an event of an armed key
costs no call into the JVM) and whether the key's model factors changed too. It is not
checkpointed: Flink checkpoints the timers themselves, and after a restore a timer that
finds no entry renders everything the state holds.

:meth:`RowSchedule.change` adds a leading edge: a key with no row in the last interval
renders at once, with no timer; only its further changes within the interval wait for
one. A timer costs calls into the JVM (registering it, firing it, reading its key), so
for keys that change once in a while (live traffic over many users) a row per change is
cheaper, while a burst still costs two renderings. :meth:`RowSchedule.defer` is the
trailing edge alone.

Each key's intervals are offset by a phase of its own (a hash of the key), so the
timers of many keys spread over the interval instead of all firing at its end: in
thread mode every operator shares one interpreter, and a second's worth of item rows
rendered in one burst held it for 100-300 ms each second, stalling the user rows
behind it (`bench freshness`: every tenth probe late by that much).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["Due", "RowSchedule"]


@dataclass(frozen=True, slots=True)
class Due:
    """What a firing timer renders: ``learned`` is None when the schedule does not know
    (a timer restored from a checkpoint): render the factors' row if there are factors."""

    learned: bool | None


@dataclass(slots=True)
class RowSchedule:
    every_ms: int
    # key -> [due time ms, factors changed since the last row]
    pending: dict[str, list] = field(default_factory=dict)
    # key -> processing time of its last row, for the keys rendered within every_ms
    # (oldest first: pruned from the front as time moves on).
    rendered: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def change(self, key: str, now_ms: int, learned: bool) -> tuple[bool, int | None]:
        """Note a change of ``key`` at processing time ``now_ms``: ``(render now, timer
        to register)``. Renders now when the key had no row within ``every_ms`` and no
        timer armed; otherwise defers to a timer at the interval's end (None when one is
        armed already)."""
        rendered = self.rendered
        cutoff = now_ms - self.every_ms
        while rendered:
            oldest = next(iter(rendered))
            if rendered[oldest] >= cutoff:
                break
            del rendered[oldest]
        if key in self.pending or key in rendered:
            return False, self.defer(key, now_ms, learned)
        rendered[key] = now_ms
        return True, None

    def defer(self, key: str, now_ms: int, learned: bool) -> int | None:
        """Note a change of ``key`` at processing time ``now_ms``; the timer to register
        (the end of the key's current interval), or None when one is armed already."""
        entry = self.pending.get(key)
        if entry is not None and entry[0] > now_ms:
            entry[1] = entry[1] or learned
            return None
        due = self.interval_end(key, now_ms)
        # A timer past due but not yet fired (the operator was busy) still renders the
        # newest state; the new one then renders again only if more changes come.
        self.pending[key] = [due, learned or (entry is not None and entry[1])]
        return due

    def interval_end(self, key: str, now_ms: int) -> int:
        """The end of the interval of ``key`` that ``now_ms`` falls in: the key's
        intervals start at multiples of ``every_ms`` plus its phase (CRC-32 of the key
        modulo ``every_ms``: the same in every process, unlike ``hash``)."""
        every = self.every_ms
        phase = zlib.crc32(key.encode()) % every
        return now_ms + every - (now_ms - phase) % every

    def fire(self, key: str, timestamp: int) -> Due | None:
        """A timer of ``key`` fired at ``timestamp``: what to render, or None when a
        newer timer of the key is armed and will render it."""
        entry = self.pending.get(key)
        if entry is None:
            return Due(learned=None)
        if entry[0] > timestamp:
            return None
        del self.pending[key]
        self.rendered[key] = timestamp
        self.rendered.move_to_end(key)
        return Due(learned=bool(entry[1]))
