"""Feature history (Feast's offline store): typed files by view and date, the writer's
buffer bounded by rows and time, compaction and retention (pure file work, no services)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo.names import ITEM_STATS, USER_CF, USER_PROFILE
from ops import stack
from personalization import offline_store as store
from personalization.feature_store import feature_store
from personalization.feature_updates import FeatureUpdate, model_version_update
from personalization.model_versions import ModelVersion
from personalization.settings import HistorySettings, RedisSettings, Settings
from writer.history import CONVERT_ROWS, HistoryBuffer

DAY_US = 86_400_000_000
# 2017-11-26 01:00:00 UTC, the Taobao sample's first event.
T0_US = 1_511_658_000_000_000


def profile_row(user: str, version_us: int, total: int) -> FeatureUpdate:
    return FeatureUpdate(
        USER_PROFILE,
        user,
        version_us,
        {
            "events_total": total,
            "monetary": 2.5 * total,
            "interest_categories": ["c1", "c2"][:total],
            "interest_scores": [1.0, 0.5][:total],
            "impressed_item_counts": [total],
            "segments": ["new"],
            "last_device": "mobile",
        },
    )


def files_of(root: Path, view: str) -> list[Path]:
    return sorted((root / view).rglob("*.parquet"))


def test_rows_land_typed_in_their_view_and_date(tmp_path: Path) -> None:
    rows = [
        profile_row("u1", T0_US, 1),
        profile_row("u1", T0_US + 5, 2),
        profile_row("u2", T0_US + DAY_US, 1),
        FeatureUpdate(USER_CF, "u1", T0_US, {"cf_vector": [0.1, 0.2]}),
    ]
    # A key the view does not declare (a newer job's feature) is not a column.
    rows[0].features["not_a_feature"] = 3
    assert store.write_rows(tmp_path, rows) == 4

    days = [day for day, _ in store.partition_dirs(tmp_path, USER_PROFILE)]
    assert days == [date(2017, 11, 26), date(2017, 11, 27)]
    table = store.read_view(tmp_path, USER_PROFILE)
    assert table.schema == store.arrow_schema(USER_PROFILE)
    assert "not_a_feature" not in pq.read_schema(files_of(tmp_path, USER_PROFILE)[0]).names
    assert table.schema.field("events_total").type == pa.int64()
    assert table.schema.field("interest_categories").type == pa.list_(pa.string())
    assert table.schema.field("impressed_item_counts").type == pa.list_(pa.int64())
    got = sorted(table.to_pylist(), key=lambda r: (r["event_timestamp"], r["user_id"]))
    assert [(r["user_id"], r["events_total"]) for r in got] == [("u1", 1), ("u1", 2), ("u2", 1)]
    assert got[1]["event_timestamp"] == datetime.fromtimestamp((T0_US + 5) / 1e6, tz=UTC)
    assert got[1]["interest_categories"] == ["c1", "c2"]
    assert got[1]["monetary"] == 5.0
    # A feature the row does not carry is null, not a made-up value.
    assert got[0]["cart_items"] is None
    cf = store.read_view(tmp_path, USER_CF).to_pylist()
    assert cf[0]["cf_vector"] == [0.1, 0.2]


def test_erasures_and_model_versions_are_not_feature_rows(tmp_path: Path) -> None:
    version = ModelVersion("propensity", "v1", 1_000, 10)
    rows = [
        FeatureUpdate(USER_PROFILE, "u1", T0_US, {}, erase=True),
        model_version_update(version),
    ]
    assert store.write_rows(tmp_path, rows) == 0
    assert files_of(tmp_path, USER_PROFILE) == []
    assert len(list((tmp_path / store.ERASURES).glob("*.parquet"))) == 1


def test_compaction_removes_an_erased_users_rows_up_to_the_erasure(tmp_path: Path) -> None:
    store.write_rows(
        tmp_path,
        [
            profile_row("u1", T0_US, 1),
            profile_row("u1", T0_US + DAY_US, 2),
            profile_row("u2", T0_US + 1, 1),
            FeatureUpdate(USER_CF, "u1", T0_US + 2, {"cf_vector": [0.5]}),
            FeatureUpdate(ITEM_STATS, "u1", T0_US + 3, {"views_1h": 1}),  # an item "u1"
        ],
    )
    # The erasure, then the user comes back with a new row.
    erase_at = T0_US + DAY_US + 10
    store.write_rows(tmp_path, [FeatureUpdate(USER_PROFILE, "u1", erase_at, {}, erase=True)])
    store.write_rows(tmp_path, [profile_row("u1", erase_at + 5, 1)])

    report = store.compact(tmp_path, keep_days=0)
    assert report.erased_rows_dropped == 3  # two profile rows and the CF row
    profile = store.read_view(tmp_path, USER_PROFILE).to_pylist()
    assert sorted((r["user_id"], r["events_total"]) for r in profile) == [("u1", 1), ("u2", 1)]
    assert store.read_view(tmp_path, USER_CF).num_rows == 0
    assert store.read_view(tmp_path, ITEM_STATS).num_rows == 1  # items are not users
    # Each day keeps one merged file; the erasure log is one file too.
    assert [p.parent.name for p in files_of(tmp_path, USER_PROFILE)] == [
        "2017-11-26",
        "2017-11-27",
    ]
    assert len(list((tmp_path / store.ERASURES).glob("*.parquet"))) == 1
    # A replay of the erased row is removed again by the next compaction.
    store.write_rows(tmp_path, [profile_row("u1", T0_US, 1)])
    assert store.compact(tmp_path, keep_days=0).erased_rows_dropped == 1


def test_a_file_is_never_visible_half_written(tmp_path: Path) -> None:
    store.write_rows(tmp_path, [profile_row("u1", T0_US, 1)])
    names = [p.name for p in (tmp_path / USER_PROFILE).rglob("*")]
    assert not [n for n in names if n.startswith(".")]
    assert len(files_of(tmp_path, USER_PROFILE)) == 1


def test_a_badly_typed_group_is_skipped_and_the_rest_written(tmp_path: Path) -> None:
    bad = FeatureUpdate(USER_PROFILE, "u1", T0_US, {"events_total": "many"})
    good = FeatureUpdate(ITEM_STATS, "i1", T0_US, {"category": "c", "views_1h": 3})
    assert store.write_rows(tmp_path, [bad, good]) == 1
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == 0
    assert store.read_view(tmp_path, ITEM_STATS).column("views_1h").to_pylist() == [3]


def test_compaction_merges_each_day_drops_duplicates_and_old_days(tmp_path: Path) -> None:
    day1 = [profile_row("u1", T0_US + i, i + 1) for i in range(3)]
    day2 = [profile_row("u2", T0_US + DAY_US + i, i + 1) for i in range(2)]
    store.write_rows(tmp_path, day1[:2])
    store.write_rows(tmp_path, day1[1:])  # a replayed row: same entity and version
    store.write_rows(tmp_path, day2[:1])
    store.write_rows(tmp_path, day2[1:])
    assert len(files_of(tmp_path, USER_PROFILE)) == 4

    report = store.compact(tmp_path, keep_days=0)
    assert report.partitions_merged == 2
    assert report.files_before == 4 and report.files_after == 2
    assert report.duplicates_dropped == 1
    assert len(files_of(tmp_path, USER_PROFILE)) == 2
    rows = store.read_view(tmp_path, USER_PROFILE).to_pylist()
    assert sorted((r["user_id"], r["events_total"]) for r in rows) == [
        ("u1", 1),
        ("u1", 2),
        ("u1", 3),
        ("u2", 1),
        ("u2", 2),
    ]
    # Compacting again changes nothing.
    again = store.compact(tmp_path, keep_days=0)
    assert again.partitions_merged == 0 and again.files_after == 2

    # Keep one day before 2017-11-28: the 26th goes, the 27th stays.
    kept = store.compact(tmp_path, keep_days=1, today=date(2017, 11, 28))
    assert kept.partitions_dropped == 1
    assert [d for d, _ in store.partition_dirs(tmp_path, USER_PROFILE)] == [date(2017, 11, 27)]
    assert {r["user_id"] for r in store.read_view(tmp_path, USER_PROFILE).to_pylist()} == {"u2"}


def test_compaction_keeps_the_newest_row_order_by_time(tmp_path: Path) -> None:
    store.write_rows(tmp_path, [profile_row("u1", T0_US + 9, 3)])
    store.write_rows(tmp_path, [profile_row("u1", T0_US + 1, 1), profile_row("u2", T0_US, 1)])
    store.compact(tmp_path, keep_days=0)
    (only,) = files_of(tmp_path, USER_PROFILE)
    stamps = pq.read_table(only).column("event_timestamp").to_pylist()
    assert stamps == sorted(stamps)


def test_the_buffer_flushes_by_rows_and_by_age(tmp_path: Path) -> None:
    buffer = HistoryBuffer(tmp_path, HistorySettings(flush_rows=3, flush_interval_s=0.2))
    assert (tmp_path / USER_PROFILE).is_dir()  # the FileSource folders exist at once
    assert not buffer.due()
    buffer.add([profile_row("u1", T0_US, 1), profile_row("u1", T0_US + 1, 2)])
    assert not buffer.due()
    buffer.add([profile_row("u1", T0_US + 2, 3)])
    assert buffer.due()  # three rows
    assert buffer.flush() == 3 and not buffer.due()
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == 3

    buffer.add([profile_row("u2", T0_US, 1)])
    assert not buffer.due()
    time.sleep(0.25)
    assert buffer.due()  # old enough
    buffer.flush()
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == 4
    assert buffer.flushed_rows == 4


def test_small_batches_are_converted_together(tmp_path: Path) -> None:
    """Live traffic comes in batches of ~20 rows: they wait as rows until CONVERT_ROWS
    have come, then go to Arrow in one table per view and day; a flush takes the rest."""
    buffer = HistoryBuffer(tmp_path, HistorySettings(flush_rows=100_000))
    n = 0
    while n < CONVERT_ROWS - 20:
        buffer.add([profile_row(f"u{n + i}", T0_US + n + i, 1) for i in range(20)])
        n += 20
    assert not buffer.pending and buffer.buffered_rows == n  # nothing converted yet
    buffer.add([profile_row(f"u{n + i}", T0_US + n + i, 1) for i in range(20)])
    n += 20
    assert buffer.pending.rows == n and buffer.unconverted == []
    assert [len(t) for t in buffer.pending.tables.values()] == [1]  # one table for all
    buffer.add([profile_row("late", T0_US + n, 2)])
    assert buffer.flush() == n + 1
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == n + 1
    assert buffer.buffered_rows == 0 and not buffer.due()


def test_a_failed_flush_keeps_the_rows(tmp_path: Path) -> None:
    blocked = tmp_path / "history"
    buffer = HistoryBuffer(blocked, HistorySettings(flush_rows=1))
    buffer.add([profile_row("u1", T0_US, 1)])
    # The date folder cannot be created: a file is in its way.
    (blocked / USER_PROFILE / "2017-11-26").write_text("in the way")
    try:
        buffer.flush()
    except OSError:
        pass
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError("flush over a blocked folder did not fail")
    assert buffer.pending.rows == 1
    (blocked / USER_PROFILE / "2017-11-26").unlink()
    assert buffer.flush() == 1
    assert not buffer.pending


def test_compaction_brings_old_files_to_the_current_schema(tmp_path: Path) -> None:
    """A file from before a feature existed (fewer columns) is rewritten with every
    column of the view, so dask (Feast's reader) sees them in every file."""
    folder = tmp_path / USER_PROFILE / "2017-11-26"
    folder.mkdir(parents=True)
    old = pa.table(
        {
            "user_id": ["u1"],
            "event_timestamp": pa.array([T0_US], pa.int64()).cast(pa.timestamp("us", "UTC")),
            "events_total": [4],
        }
    )
    pq.write_table(old, folder / "part-1-0.parquet")
    report = store.compact(tmp_path, keep_days=0)
    assert report.partitions_merged == 1 and report.files_after == 1
    (only,) = files_of(tmp_path, USER_PROFILE)
    schema = pq.read_schema(only).remove_metadata()
    assert schema.equals(store.arrow_schema(USER_PROFILE))
    rows = pq.read_table(only).to_pylist()
    assert rows[0]["events_total"] == 4 and rows[0]["cluster_id"] is None
    # Now current: compacting again leaves it alone.
    assert store.compact(tmp_path, keep_days=0).partitions_merged == 0


def test_training_sets_are_point_in_time_and_keep_every_label_row(tmp_path: Path) -> None:
    """Feast over the history files (feast apply in a subprocess, no Redis needed): each
    label row gets the entity's newest row at or before its time; a label before the
    entity's first row gets nulls (Feast 0.67's dask store would drop it)."""
    # Nothing listens on port 1: feast apply and offline reads never touch Redis.
    settings = Settings(run_dir=str(tmp_path / "run"), redis=RedisSettings(port=1))
    stack.feast_apply(settings)
    minute_us = 60_000_000
    store.write_rows(
        settings.history_path,
        [profile_row(u, T0_US + i * minute_us, i + 1) for u in ("u1", "u3") for i in range(3)],
    )
    at = [-30, 30, 30, 150, 150, 10_000]  # seconds after T0
    labels = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3", "u1", "u3"],
            "event_timestamp": pd.to_datetime(
                [T0_US // 1000 + s * 1000 for s in at], unit="ms", utc=True
            ),
            "label": [0, 1, 2, 3, 4, 5],
        }
    )
    got = store.training_set(
        feature_store(settings), labels, ["user_profile:events_total", "user_profile:monetary"]
    )
    assert got["label"].tolist() == [0, 1, 2, 3, 4, 5]
    assert got["user_id"].tolist() == labels["user_id"].tolist()
    totals = [None if pd.isna(x) else int(x) for x in got["events_total"]]
    # before u1's first row; after its first; unknown u2; after u3's third; u1's third;
    # long after u3's last (within the view's ttl).
    assert totals == [None, 1, None, 3, 3, 3]
    assert got["monetary"].tolist()[3] == 7.5


def test_a_detached_buffer_takes_the_rows_and_leaves_an_empty_one(tmp_path: Path) -> None:
    cfg = HistorySettings(flush_rows=100, flush_interval_s=0.2)
    buffer = HistoryBuffer(tmp_path, cfg)
    buffer.add([profile_row("u1", T0_US, 1), profile_row("u2", T0_US, 1)])
    time.sleep(0.25)
    assert buffer.due()
    taken = buffer.detach()
    assert not buffer.due() and buffer.buffered_rows == 0
    buffer.add([profile_row("u3", T0_US, 1)])  # rows keep coming while taken is written
    assert taken.flush() == 2
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == 2
    assert buffer.flush() == 1
    assert store.read_view(tmp_path, USER_PROFILE).num_rows == 3


def test_an_unwritten_buffer_absorbs_what_came_since(tmp_path: Path) -> None:
    buffer = HistoryBuffer(tmp_path, HistorySettings(flush_rows=100))
    buffer.add([profile_row("u1", T0_US, 1)])
    buffer._convert()  # one row as Arrow, one still Python below
    failed = buffer.detach()
    buffer.add([profile_row("u2", T0_US, 1)])
    failed.absorb(buffer.detach())
    assert failed.buffered_rows == 2
    assert failed.flush() == 2
    assert sorted(store.read_view(tmp_path, USER_PROFILE).column("user_id").to_pylist()) == [
        "u1",
        "u2",
    ]
