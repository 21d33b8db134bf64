"""The ids a user's recent events came with, for dropping redeliveries (pure).

They live in the user's keyed state, which PyFlink pickles on every read and write. A
``dict`` of id strings was the largest part of that state for an active user (256 ids
of ~30 characters: ~1.6 KB and ~100 µs of pickling per event in the ingest profile).
:class:`SeenIds` keeps a stable 64-bit hash of each id and its event time in two
``array('q')``, which pickle as two byte strings.

The hash is BLAKE2b (not Python's ``hash``, which changes per process): a restored
checkpoint recognises the ids of the run before. Two of at most ``dedup_max_ids`` ids
colliding in 64 bits is a chance of about n²/2⁶⁵, far below one in a trillion.
"""

from __future__ import annotations

import hashlib
from array import array

__all__ = ["SeenIds", "id_hash"]


def id_hash(event_id: str) -> int:
    """A signed 64-bit digest of ``event_id``, the same in every process."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)


class SeenIds:
    """Event ids (as hashes) in insertion order with their event times, bounded by a
    horizon of event time and by a count (the oldest insertions go first)."""

    __slots__ = ("hashes", "times")

    def __init__(self) -> None:
        self.hashes = array("q")
        self.times = array("q")

    @classmethod
    def from_dict(cls, ids: dict[str, int]) -> SeenIds:
        """The ``{id: time}`` form of keyed state written before this class."""
        seen = cls()
        for event_id, t in ids.items():
            seen.hashes.append(id_hash(event_id))
            seen.times.append(t)
        return seen

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, event_id: str) -> bool:
        return id_hash(event_id) in self.hashes

    def add(self, event_id: str, time_ms: int, horizon_ms: int, max_ids: int) -> None:
        """Remember ``event_id``. Ids leave in insertion order: beyond ``max_ids``, and
        from the front while older than ``horizon_ms`` (an older id behind a newer one
        stays until it reaches the front: memory stays bounded by ``max_ids``, and an id
        is never forgotten before the horizon)."""
        hashes, times = self.hashes, self.times
        hashes.append(id_hash(event_id))
        times.append(time_ms)
        drop = max(0, len(times) - max_ids)
        while drop < len(times) and times[drop] < horizon_ms:
            drop += 1
        if drop:
            del hashes[:drop]
            del times[:drop]

    def __getstate__(self) -> tuple[bytes, bytes]:
        return self.hashes.tobytes(), self.times.tobytes()

    def __setstate__(self, state: tuple[bytes, bytes]) -> None:
        hashes, times = array("q"), array("q")
        hashes.frombytes(state[0])
        times.frombytes(state[1])
        self.hashes, self.times = hashes, times

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SeenIds) and self.hashes == other.hashes and self.times == other.times
        )

    def __repr__(self) -> str:
        return f"SeenIds({len(self)} ids)"
