"""``personalize history``: the feature history (Feast's offline store) on disk.

    personalize history stats                   files, rows and bytes per view and day
    personalize history compact [--keep-days N]  merge each day's files, drop old days
                                                and erased users' rows

The writer appends a file per flush (``writer/history.py``); compaction keeps the file
count and size bounded (``personalization/offline_store.compact``). It is safe while the
writer runs; run it from cron, e.g. daily.
"""

from __future__ import annotations

import argparse
from typing import Any

import pyarrow.parquet as pq

from personalization import offline_store
from personalization.settings import Settings

__all__ = ["add_commands"]


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    root = settings.history_path
    print(f"feature history: {root}")
    total_files = total_rows = total_bytes = 0
    for view in offline_store.history_views():
        for day, folder in offline_store.partition_dirs(root, view):
            files = [p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))]
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
            size = sum(p.stat().st_size for p in files)
            print(f"  {view:<14} {day}  {len(files):>5} files {rows:>10,} rows {size:>12,} B")
            total_files += len(files)
            total_rows += rows
            total_bytes += size
    print(f"  total: {total_files} files, {total_rows:,} rows, {total_bytes:,} B")
    return 0


def cmd_compact(settings: Settings, args: argparse.Namespace) -> int:
    keep = settings.history.keep_days if args.keep_days is None else args.keep_days
    report = offline_store.compact(settings.history_path, keep)
    print(
        f"compacted {settings.history_path} (keep {keep or 'all'} days): "
        f"{report.partitions_merged} day(s) merged, files {report.files_before} -> "
        f"{report.files_after}, {report.duplicates_dropped} duplicate rows dropped, "
        f"{report.erased_rows_dropped} erased rows removed, "
        f"{report.partitions_dropped} day(s) past retention removed"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``history`` on the ``personalize`` subparsers."""
    history = sub.add_parser("history", help="feature history (offline store): stats, compact")
    actions = history.add_subparsers(dest="history_action", required=True)
    actions.add_parser("stats", help="files, rows and bytes per view and day").set_defaults(
        func=cmd_stats
    )
    compact = actions.add_parser("compact", help="merge each day's files, drop old days")
    compact.add_argument(
        "--keep-days",
        type=int,
        default=None,
        help="days kept before today (default history.keep_days; 0 = all)",
    )
    compact.set_defaults(func=cmd_compact)
