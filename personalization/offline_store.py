"""Feature history: the layout of Feast's offline store (parquet files by view and date).

The online-store writer appends every feature row it applies (``writer/history.py``
buffers them; :func:`write_rows` writes one file per flush), and the feature views'
``FileSource`` paths point at the same directories (``feature_repo/features.py`` reads
``PZ_HISTORY_DIR``, which :meth:`Settings.feast_env` sets to ``history_path``), so
``FeatureStore.get_historical_features`` builds point-in-time-correct training sets from
what the platform computed.

Layout under ``history_path``::

    <view>/YYYY-MM-DD/part-<ms>-<n>.parquet     one file per flush (the row's UTC date)
    <view>/YYYY-MM-DD/compact-<ms>-<n>.parquet  what :func:`compact` merged them into

The date is the row's version time (event time), so a backfill lands in the days it
happened. Folders are plain dates, not hive ``date=`` names (dask, which Feast reads a
FileSource folder with, would then want the column in every file). Each file is
written under a dot-name and renamed, so a reader never sees half a file (pyarrow and
dask skip names starting with ``.`` or ``_``). Rows are versioned (a strictly growing
timestamp per entity), so the same row written twice (a replay after a crash between a
flush and the offset commit) is a duplicate with equal values, which compaction drops.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureStore

from feature_repo.features import ENTITY_OF_VIEW
from feature_repo.names import ITEM_CF, ITEM_STATS, USER_CF, USER_PROFILE
from personalization.feature_store import feature_kinds
from personalization.feature_updates import FeatureUpdate, is_model_version

__all__ = [
    "HISTORY_VIEWS",
    "TIMESTAMP_COLUMN",
    "CompactionReport",
    "Pending",
    "arrow_schema",
    "compact",
    "ensure_layout",
    "history_views",
    "partition_dirs",
    "read_view",
    "to_arrow",
    "training_set",
    "write_pending",
    "write_rows",
]

log = logging.getLogger(__name__)

# The FileSources' timestamp_field (feature_repo/features.py).
TIMESTAMP_COLUMN = "event_timestamp"

_ARROW_OF_KIND = {
    "int64": pa.int64(),
    "double": pa.float64(),
    "string": pa.string(),
    "string_list": pa.list_(pa.string()),
    "double_list": pa.list_(pa.float64()),
    "int64_list": pa.list_(pa.int64()),
}
_sequence = itertools.count()
# Erasures seen by the writer (entity key column, entity id, time in µs): compaction
# removes the entity's rows up to that time. A "_" folder: no FileSource reads it.
ERASURES = "_erasures"
_ERASURE_SCHEMA = pa.schema(
    [
        pa.field("entity", pa.string()),
        pa.field("entity_id", pa.string()),
        pa.field("erased_us", pa.int64()),
    ]
)


# The views the job computes (the feature_updates changelog): their FileSources point
# here. Model versions and erasures ride the same changelog but are not feature rows.
HISTORY_VIEWS = (USER_PROFILE, ITEM_STATS, USER_CF, ITEM_CF)


def history_views() -> tuple[str, ...]:
    return HISTORY_VIEWS


@cache
def arrow_schema(view: str) -> pa.Schema:
    """The entity key, the timestamp, then every feature with its Feast dtype."""
    return pa.schema(
        [
            pa.field(ENTITY_OF_VIEW[view], pa.string()),
            pa.field(TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        ]
        + [pa.field(name, _ARROW_OF_KIND[kind]) for name, kind in feature_kinds(view).items()]
    )


def ensure_layout(root: Path) -> None:
    """Each view's folder, so the FileSources exist when Feast validates them at apply.

    No empty placeholder file goes in: Feast's dask offline store sorts the joined rows
    by timestamp and fails on a file without statistics. A view nobody wrote yet has no
    history to join, and get_historical_features says so."""
    for view in history_views():
        (root / view).mkdir(parents=True, exist_ok=True)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


_DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1)


@cache
def _feature_schema(view: str) -> pa.Schema:
    return pa.schema(list(arrow_schema(view))[2:])


@dataclass
class Pending:
    """Rows converted to Arrow and not written yet: tables per (view, day index) and
    erasures as (entity key, entity id, time µs). Arrow buffers, not Python objects: the
    writer holds up to ``history.flush_rows`` rows between flushes, and as dicts they
    would be garbage-collector work for as long."""

    tables: dict[tuple[str, int], list[pa.Table]] = field(default_factory=dict)
    erasures: list[tuple[str, str, int]] = field(default_factory=list)
    rows: int = 0

    def __bool__(self) -> bool:
        return bool(self.tables or self.erasures)


def to_arrow(updates: Iterable[FeatureUpdate], pending: Pending | None = None) -> Pending:
    """Add ``updates`` to ``pending`` (a new one by default) as Arrow tables.

    Model versions are not feature rows: skipped. An erasure goes to the erasure log
    (``_erasures/``), and :func:`compact` removes the entity's rows up to its time from
    every view of that entity."""
    pending = pending if pending is not None else Pending()
    # Grouped by the day index of the version time: integer arithmetic per row (a
    # datetime per row cost a third of the whole write).
    groups: dict[tuple[str, int], list[FeatureUpdate]] = {}
    for row in updates:
        if is_model_version(row) or row.view not in HISTORY_VIEWS:
            continue
        if row.erase:
            pending.erasures.append((ENTITY_OF_VIEW[row.view], row.entity_id, row.version_us))
            continue
        groups.setdefault((row.view, row.version_us // _DAY_US), []).append(row)
    for (view, day_index), rows in groups.items():
        schema = arrow_schema(view)
        try:
            # Arrow reads the feature dicts itself (keys not in the view are ignored,
            # missing ones are null): about half the cost of columns built in Python.
            features = pa.Table.from_pylist(
                [r.features for r in rows], schema=_feature_schema(view)
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            # Only the job writes these rows, typed by features.py: a value of another
            # type is a bug there; retrying cannot fix it, so the group is logged, not kept.
            log.error("feature history: %d %s rows not writable: %s", len(rows), view, exc)
            continue
        stamps = pa.array([r.version_us for r in rows], pa.int64()).cast(schema.field(1).type)
        table = features.add_column(
            0, schema.field(0), pa.array([r.entity_id for r in rows], pa.string())
        ).add_column(1, schema.field(1), stamps)
        pending.tables.setdefault((view, day_index), []).append(table)
        pending.rows += len(rows)
    return pending


def write_pending(root: Path, pending: Pending) -> int:
    """One new file per (view, day) of ``pending``, and the erasures; returns the rows
    written. ``pending`` is left as it is: on an error the caller keeps it and tries
    again (a file already written then is written twice: duplicates, dropped by
    :func:`compact`)."""
    stamp = int(time.time() * 1000)
    if pending.erasures:
        _log_erasures(root, pending.erasures, stamp)
    written = 0
    for (view, day_index), tables in pending.tables.items():
        table = pa.concat_tables(tables)
        day = _EPOCH + timedelta(days=day_index)
        folder = root / view / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(table, folder / f"part-{stamp}-{next(_sequence)}.parquet")
        written += table.num_rows
    return written


def write_rows(root: Path, updates: Iterable[FeatureUpdate]) -> int:
    """:func:`to_arrow` then :func:`write_pending`: one new file per (view, day)."""
    return write_pending(root, to_arrow(updates))


def _log_erasures(root: Path, erasures: list[tuple[str, str, int]], stamp: int) -> None:
    table = pa.Table.from_arrays(
        [
            pa.array([e[0] for e in erasures], pa.string()),
            pa.array([e[1] for e in erasures], pa.string()),
            pa.array([e[2] for e in erasures], pa.int64()),
        ],
        schema=_ERASURE_SCHEMA,
    )
    folder = root / ERASURES
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(table, folder / f"part-{stamp}-{next(_sequence)}.parquet")


def _erasure_times(root: Path) -> dict[tuple[str, str], int]:
    """(entity key, entity id) -> time of its latest erasure (µs)."""
    out: dict[tuple[str, str], int] = {}
    folder = root / ERASURES
    if not folder.is_dir():
        return out
    for path in _data_files(folder):
        for rec in pq.read_table(path, schema=_ERASURE_SCHEMA).to_pylist():
            key = (rec["entity"], rec["entity_id"])
            out[key] = max(out.get(key, 0), rec["erased_us"])
    return out


def _without_erased(table: pa.Table, key: str, erased: dict[str, int]) -> pa.Table:
    """``table`` without the rows of erased entities up to their erasure."""
    if not erased or table.num_rows == 0:
        return table
    ids = table.column(key).to_pylist()
    stamps = table.column(TIMESTAMP_COLUMN).cast(pa.int64()).to_pylist()
    keep = [
        (limit := erased.get(entity)) is None or ts > limit
        for entity, ts in zip(ids, stamps, strict=True)
    ]
    return table if all(keep) else table.filter(pa.array(keep))


def partition_dirs(root: Path, view: str) -> list[tuple[date, Path]]:
    """(date, folder) of every date partition of ``view``, oldest first."""
    folder = root / view
    if not folder.is_dir():
        return []
    out = []
    for child in folder.iterdir():
        if child.is_dir():
            try:
                out.append((date.fromisoformat(child.name), child))
            except ValueError:
                continue  # not ours
    return sorted(out)


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")) and p.is_file()
    )


def read_view(root: Path, view: str, since: date | None = None) -> pa.Table:
    """Every stored row of ``view`` (from ``since`` on), without the partition column."""
    schema = arrow_schema(view)
    tables = [
        pq.read_table(path, schema=schema)
        for day, folder in partition_dirs(root, view)
        if since is None or day >= since
        for path in _data_files(folder)
    ]
    return pa.concat_tables(tables) if tables else schema.empty_table()


@dataclass
class CompactionReport:
    partitions_merged: int = 0
    files_before: int = 0
    files_after: int = 0
    duplicates_dropped: int = 0
    partitions_dropped: int = 0
    erased_rows_dropped: int = 0


def _dedup(table: pa.Table, key: str) -> pa.Table:
    """One row per (entity, timestamp), sorted by time: a version is one row's identity."""
    table = table.sort_by([(TIMESTAMP_COLUMN, "ascending"), (key, "ascending")])
    if table.num_rows < 2:
        return table
    ids = table.column(key)
    ts = table.column(TIMESTAMP_COLUMN)
    same = pc.and_(
        pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)),
        pc.equal(ts.slice(1), ts.slice(0, table.num_rows - 1)),
    )
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same.combine_chunks())])
    return table.filter(keep)


def compact(root: Path, keep_days: int, today: date | None = None) -> CompactionReport:
    """Drop partitions older than ``keep_days`` before ``today`` (0 = keep all), remove
    erased entities' rows up to their erasure, and merge each partition's files into
    one, duplicates dropped.

    A file written before a feature was added to its view is rewritten with the
    current schema (the new column null): Feast reads a folder with dask, which takes
    the columns of the first file it meets.

    Safe beside a running writer: it only ever adds new files, and compaction deletes
    exactly the files it read, after the merged file is in place (a reader in between
    sees rows twice, equal values). The erasure log is kept as long as the rows: an
    erased row replayed later is removed by the next compaction too."""
    report = CompactionReport()
    today = today or datetime.now(tz=UTC).date()
    oldest = today - timedelta(days=keep_days) if keep_days > 0 else None
    erasures = _erasure_times(root)
    for view in history_views():
        key = ENTITY_OF_VIEW[view]
        erased = {entity_id: t for (entity, entity_id), t in erasures.items() if entity == key}
        schema = arrow_schema(view)
        for day, folder in partition_dirs(root, view):
            if oldest is not None and day < oldest:
                shutil.rmtree(folder)
                report.partitions_dropped += 1
                continue
            files = _data_files(folder)
            report.files_before += len(files)
            if not files:
                continue
            table = pa.concat_tables(pq.read_table(p, schema=schema) for p in files)
            kept = _without_erased(table, key, erased)
            if (
                len(files) == 1
                and kept.num_rows == table.num_rows
                and pq.read_schema(files[0]).remove_metadata().equals(schema)
            ):
                report.files_after += 1
                continue
            report.erased_rows_dropped += table.num_rows - kept.num_rows
            merged = _dedup(kept, key)
            report.duplicates_dropped += kept.num_rows - merged.num_rows
            if merged.num_rows:
                name = f"compact-{int(time.time() * 1000)}-{next(_sequence)}.parquet"
                _write_atomic(merged, folder / name)
                report.files_after += 1
            for path in files:
                path.unlink()
            report.partitions_merged += 1
    _compact_erasure_log(root, oldest)
    return report


def _compact_erasure_log(root: Path, oldest: date | None) -> None:
    """One file of the latest erasure per entity, without those older than every row
    still kept (nothing left for them to remove)."""
    folder = root / ERASURES
    files = _data_files(folder) if folder.is_dir() else []
    if len(files) <= 1 and oldest is None:
        return
    latest = _erasure_times(root)
    floor_us = (
        int(datetime(oldest.year, oldest.month, oldest.day, tzinfo=UTC).timestamp()) * 1_000_000
        if oldest is not None
        else None
    )
    kept = sorted(
        (entity, entity_id, t)
        for (entity, entity_id), t in latest.items()
        if floor_us is None or t >= floor_us
    )
    table = pa.Table.from_arrays(
        [pa.array([k[i] for k in kept], f.type) for i, f in enumerate(_ERASURE_SCHEMA)],
        schema=_ERASURE_SCHEMA,
    )
    if kept:
        _write_atomic(
            table, folder / f"compact-{int(time.time() * 1000)}-{next(_sequence)}.parquet"
        )
    for path in files:
        path.unlink()


_ROW = "__pz_row"


def training_set(store: FeatureStore, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """``store.get_historical_features(entity_df, features).to_df()``, every entity row
    kept, in ``entity_df``'s order.

    Feast 0.67's file (dask) offline store drops an entity row whose entity has feature
    rows but all of them later than its timestamp (a label before the user's first
    event), instead of returning it with nulls as it does for an unknown entity; the
    rows are merged back here by position, with nulls."""
    keyed = entity_df.reset_index(drop=True).assign(**{_ROW: range(len(entity_df))})
    got = store.get_historical_features(entity_df=keyed, features=features).to_df()
    values = [c for c in got.columns if c not in keyed.columns]
    merged = keyed.merge(got[[_ROW, *values]], on=_ROW, how="left").sort_values(_ROW)
    return merged.drop(columns=_ROW).reset_index(drop=True)
