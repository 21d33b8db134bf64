"""A read cache in front of a keyed ValueState of pickled objects (thread mode).

In thread mode every ``ValueState.value()`` is a call from Python into the JVM's state
backend, and the bytes it returns are unpickled into a new object: for the user state
that is one crossing and ~35 µs of unpickling per event (``bench ingest --py-spy``).
PyFlink's process mode has a Python-side state cache for this (``python.state.cache-size``);
thread mode has none. This is one, for reads only:

- ``update`` writes through at once, so Flink's state (and any checkpoint of it) is
  always what the operator last wrote; nothing is ever deferred past a barrier.
- The cache keeps the object the operator last read or wrote, keyed by the key the
  caller already knows (an event's user or item id: asking Flink for the current key
  would be one more crossing).
- The caller's contract: an object read from here is either written back (``update``)
  or dropped (``evict``) after a step that may have changed it in place. Then a cached
  object always equals what Flink's state holds, and a restore (which reopens the
  operator with an empty cache) reads the very values the cached run would have used.

Bounded by entries, least recently used first out; a miss costs what the uncached
read did.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CachedValueState"]


class CachedValueState:
    """``state`` (a PyFlink keyed ValueState) behind a read cache of ``entries`` keys."""

    __slots__ = ("cache", "entries", "hits", "misses", "state")

    def __init__(self, state: Any, entries: int) -> None:
        self.state = state
        self.entries = max(0, entries)
        self.cache: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def value(self, key: str) -> Any:
        """The state of ``key``, which must be Flink's current key."""
        cache = self.cache
        if key in cache:
            self.hits += 1
            value = cache.pop(key)  # re-inserted: dicts keep insertion order (LRU)
            cache[key] = value
            return value
        self.misses += 1
        value = self.state.value()
        if value is not None:
            self._keep(key, value)
        return value

    def update(self, key: str, value: Any) -> None:
        self.state.update(value)
        self.cache.pop(key, None)
        self._keep(key, value)

    def clear(self, key: str) -> None:
        self.state.clear()
        self.cache.pop(key, None)

    def evict(self, key: str) -> None:
        """Forget the cached object of ``key`` (it may have changed without a write)."""
        self.cache.pop(key, None)

    def _keep(self, key: str, value: Any) -> None:
        if self.entries == 0:
            return
        cache = self.cache
        cache[key] = value
        if len(cache) > self.entries:
            del cache[next(iter(cache))]
