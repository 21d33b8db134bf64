"""The job's steps wired in process (flink_jobs/local.py), on a slice of a real dataset."""

from __future__ import annotations

import json
import time

import pytest

from flink_jobs.local import LocalPipeline
from personalization.events import ERASURE
from personalization.settings import Settings
from traffic.replay import dataset_path, iter_events

NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def raws() -> list[str]:
    path = dataset_path("movielens-100k/u.data")
    events = list(iter_events(path, limit=3000))
    # Bring the file's times close to now: the validation refuses events far in the past.
    shift = NOW_MS - 3_600_000 - max(e["event_time"] for e in events)
    for e in events:
        e["event_time"] += shift
    return [json.dumps(e) for e in events]


def rows_by_key(pipeline: LocalPipeline) -> dict[tuple[str, str], str]:
    newest = {}
    for row in pipeline.output.rows:
        newest[(row.view, row.entity_id)] = row.to_json()
    return newest


def test_pickled_state_and_records_change_nothing(raws: list[str]) -> None:
    # Flink keeps state and records as pickles: a field that does not survive a round
    # trip would make the job differ from the logic it runs.
    plain = LocalPipeline(Settings(), now_ms=lambda: NOW_MS)
    pickled = LocalPipeline(Settings(), pickled=True, now_ms=lambda: NOW_MS)
    plain.run(raws)
    pickled.run(raws)
    assert plain.output.accepted == len(raws)
    assert rows_by_key(plain) == rows_by_key(pickled)


def test_every_view_gets_rows(raws: list[str]) -> None:
    pipeline = LocalPipeline(Settings(), now_ms=lambda: NOW_MS)
    pipeline.run(raws)
    views = {row.view for row in pipeline.output.rows}
    assert views == {"user_profile", "item_stats", "user_cf", "item_cf"}


def test_bad_payloads_become_dead_letters() -> None:
    pipeline = LocalPipeline(Settings(), now_ms=lambda: NOW_MS)
    pipeline.run(["{not json", json.dumps({"event_type": "product_view"})])
    assert pipeline.output.accepted == 0
    reasons = [json.loads(d)["reason"] for d in pipeline.output.dead_letters]
    assert len(reasons) == 2 and all(reasons)


def test_erasure_clears_the_users_state(raws: list[str]) -> None:
    pipeline = LocalPipeline(Settings(), now_ms=lambda: NOW_MS)
    pipeline.run(raws)
    user = json.loads(raws[0])["user_id"]
    assert pipeline.user_state(user) is not None
    erase = {
        "event_id": "erase-1",
        "user_id": user,
        "event_type": ERASURE,
        "event_time": NOW_MS - 1000,
    }
    pipeline.run([json.dumps(erase)])
    assert pipeline.user_state(user) is None
    last = pipeline.output.rows[-1]
    assert (last.view, last.entity_id, last.erase) == ("user_profile", user, True)
