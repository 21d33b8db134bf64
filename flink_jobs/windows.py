"""Bucketed sliding-window counters small enough to live in per-key state.

A window of length ``W`` with bucket size ``g`` counts the events whose bucket
``t // g`` is one of the last ``W // g`` buckets up to and including the bucket of the
reference time (the newest event time the key has seen). Counting is exact under that
definition, which tests recompute independently; it trades sub-bucket precision at
the trailing edge for bounded state: at most ``W // g`` small ints per window.
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> (window length ms, bucket size ms)
WINDOWS: dict[str, tuple[int, int]] = {
    "5m": (5 * 60_000, 60_000),
    "1h": (3_600_000, 5 * 60_000),
    "24h": (24 * 3_600_000, 3_600_000),
}


@dataclass(frozen=True, slots=True)
class WindowSpec:
    name: str
    length_ms: int
    bucket_ms: int

    @property
    def buckets(self) -> int:
        return self.length_ms // self.bucket_ms

    def oldest_bucket(self, reference_ms: int) -> int:
        return reference_ms // self.bucket_ms - self.buckets + 1


def window_specs(names: tuple[str, ...] = ("5m", "1h", "24h")) -> tuple[WindowSpec, ...]:
    return tuple(WindowSpec(name, *WINDOWS[name]) for name in names)


def add(
    buckets: dict[int, int], spec: WindowSpec, event_ms: int, reference_ms: int, amount: int = 1
) -> None:
    """Count one event and drop buckets that fell out of the window."""
    bucket = event_ms // spec.bucket_ms
    oldest = spec.oldest_bucket(reference_ms)
    if bucket >= oldest:
        buckets[bucket] = buckets.get(bucket, 0) + amount
    expire(buckets, spec, reference_ms)


def expire(buckets: dict[int, int], spec: WindowSpec, reference_ms: int) -> None:
    oldest = spec.oldest_bucket(reference_ms)
    for stale in [b for b in buckets if b < oldest]:
        del buckets[stale]


def total(buckets: dict[int, int], spec: WindowSpec, reference_ms: int) -> int:
    # Every feature row sums each window of each counted kind, most of them empty for a
    # given key: the early return and the list (not a generator) are most of its cost.
    if not buckets:
        return 0
    oldest = spec.oldest_bucket(reference_ms)
    return sum([count for bucket, count in buckets.items() if bucket >= oldest])


def count_in_window(event_times_ms: list[int], spec: WindowSpec, reference_ms: int) -> int:
    """Reference implementation over raw times (used by tests and offline checks)."""
    oldest = spec.oldest_bucket(reference_ms)
    newest = reference_ms // spec.bucket_ms
    return sum(1 for t in event_times_ms if oldest <= t // spec.bucket_ms <= newest)
