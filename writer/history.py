"""The writer's side of the feature history: rows buffered, one file per flush.

The writer hands every batch it applied to Redis to :meth:`HistoryBuffer.add` (the
batch converted to Arrow tables in one call; no file per row or batch) and asks
:meth:`HistoryBuffer.due` after each batch; a flush (one file per view and day,
``personalization/offline_store.write_pending``) happens when
``history.flush_rows`` rows are buffered or ``history.flush_interval_s`` passed since the
first buffered one. The writer commits its Kafka offsets only after a flush, so a crash
loses no history: the unflushed rows are redelivered, Redis skips them (not newer) and
they are appended once. A crash between a flush and the commit appends those rows twice:
the same (entity, version) with equal values, which compaction drops.
"""

from __future__ import annotations

import time
from pathlib import Path

from personalization.feature_updates import FeatureUpdate
from personalization.offline_store import Pending, ensure_layout, to_arrow, write_pending
from personalization.settings import HistorySettings

__all__ = ["HistoryBuffer"]


class HistoryBuffer:
    def __init__(self, root: Path, cfg: HistorySettings) -> None:
        self.root = root
        self.max_rows = cfg.flush_rows
        self.max_age_s = cfg.flush_interval_s
        self.pending = Pending()
        self.first_at = 0.0
        self.flushed_rows = 0
        self.flushes = 0
        ensure_layout(root)

    def add(self, updates: list[FeatureUpdate]) -> None:
        """The batch's rows, converted to Arrow now (one call per batch, not per row):
        what waits for the flush holds no Python objects per row."""
        if updates and not self.pending:
            self.first_at = time.monotonic()
        to_arrow(updates, self.pending)

    def due(self) -> bool:
        return bool(self.pending) and (
            self.pending.rows >= self.max_rows or time.monotonic() - self.first_at >= self.max_age_s
        )

    def flush(self) -> int:
        """Write what is pending; it stays pending if the write fails (OSError)."""
        if not self.pending:
            return 0
        written = write_pending(self.root, self.pending)
        self.pending = Pending()
        self.flushed_rows += written
        self.flushes += 1
        return written
