"""Gap-based sessions that do not depend on arrival order (pure).

Events of one user arrive from several topics and partitions, so an event can arrive
after later ones. Sessions are kept as a short list of intervals: an event joins every
interval it lies within ``gap`` of (bridging two merges them), otherwise it starts a new
one. The result is the same for any arrival order, as long as the late event is within
the kept intervals: the classic "sort the times, split where the gap exceeds the
threshold" definition, which tests recompute independently.
"""

from __future__ import annotations

from dataclasses import dataclass

from personalization.compact_pickle import compact_pickle

MAX_KEPT = 4  # older sessions are folded into a counter


@compact_pickle
@dataclass(slots=True)
class Session:
    start_ms: int
    end_ms: int
    events: int = 0
    converted: bool = False  # an add-to-cart or purchase happened in it
    entry: str = ""  # item or page of its earliest event
    ended: bool = False  # its end was decided (timer past end + gap)

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@compact_pickle
@dataclass(slots=True)
class Sessions:
    kept: list[Session]
    folded: int = 0  # sessions older than the kept ones

    @property
    def count(self) -> int:
        return self.folded + len(self.kept)

    @property
    def current(self) -> Session | None:
        return self.kept[-1] if self.kept else None


def new_sessions() -> Sessions:
    return Sessions(kept=[])


def add_event(sessions: Sessions, t: int, gap_ms: int, *, converted: bool, entry: str) -> Session:
    """Place an event at time ``t``; return the session it belongs to."""
    touching = [s for s in sessions.kept if s.start_ms - gap_ms <= t <= s.end_ms + gap_ms]
    if not touching:
        session = Session(t, t, entry=entry)
        sessions.kept.append(session)
        sessions.kept.sort(key=lambda s: s.start_ms)
        if len(sessions.kept) > MAX_KEPT:
            sessions.kept.pop(0)
            sessions.folded += 1
    else:
        session = touching[0]
        for other in touching[1:]:
            session.end_ms = max(session.end_ms, other.end_ms)
            session.events += other.events
            session.converted |= other.converted
            sessions.kept.remove(other)
        if t < session.start_ms:
            session.start_ms = t
            session.entry = entry or session.entry
        session.end_ms = max(session.end_ms, t)
        session.ended = False
    session.events += 1
    session.converted |= converted
    return session


def ended_sessions(sessions: Sessions, now_ms: int, gap_ms: int) -> list[Session]:
    """Sessions whose end became final at event time ``now_ms`` (marks them ended)."""
    done = []
    for session in sessions.kept:
        if not session.ended and now_ms > session.end_ms + gap_ms:
            session.ended = True
            done.append(session)
    return done


def next_end(sessions: Sessions, gap_ms: int) -> int | None:
    # An event exactly ``gap`` after the end still joins, so the end is final 1 ms later.
    open_ends = [s.end_ms + gap_ms + 1 for s in sessions.kept if not s.ended]
    return min(open_ends) if open_ends else None
