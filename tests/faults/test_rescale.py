"""Rescaling the job from savepoints: parallelism 1 -> 2 -> 1 on a standalone cluster.

A private stack (Redis, a KRaft Kafka broker with 4 partitions per topic, the
online-store writer) and a standalone cluster from ``ops.infra.flink_cluster`` with two
TaskManagers of one slot each (thread mode: one Python interpreter per TaskManager, so
parallelism 2 means two TM processes). A fixed input -- the first ``ROWS`` Taobao
UserBehavior rows in time order, the hand-made trigger users and invalid payloads of
``test_fault_tolerance.py``, whose helpers build the input, the expectations and the
comparisons here -- is replayed twice, a day apart in event time:

* run A (``ra-``), the reference that never rescales: all of it at parallelism 1;
* run B (``rb-``) in three chunks:

  1. chunk 1 to the same job at parallelism 1; the job is stopped with a savepoint
     (``POST /jobs/<id>/stop``, what ``flink stop --savepointPath`` does) while it may
     still be working through the chunk. (A savepoint followed by a cancel is not
     enough for the exactly-once sinks: a checkpoint that completes in between commits
     trigger records that the restore from the older savepoint emits again; this test
     caught one such duplicate before it used stop-with-savepoint);
  2. the job is submitted again at parallelism 2 from that savepoint (``flink run -s
     <savepoint> -p 2``, settings with ``flink.parallelism`` 2): keyed state is
     redistributed by key group (``flink.max_parallelism`` 128); chunk 2 is sent, and
     the user operator must have read records in both subtasks, each on its own
     TaskManager; stop with a savepoint;
  3. submitted at parallelism 1 from the second savepoint; chunk 3 is sent.

At parallelism 1 the job runs with its item side apart (``flink.separate_item_side``: the
item operator, attribution and propensity in a slot sharing group of their own, here the
second TaskManager; the user and item operators must be in different ones), so the
savepoints also cross between that layout and parallelism 2's one group.

Checks: every ``user_profile`` and ``item_stats`` feature of B equals A's (times shifted
by the day; co-visitation aside, arrival-order dependent as in the other fault tests),
B's users equal features recomputed from the file (``file_mismatches``) and B's
``events_total`` / item counts equal the file's (``drain``), also after one more event
per user makes the job re-emit every user's row from the state the last restore handed
it; the trigger records (read_committed) of B equal A's with no record twice and each
hand-made trigger once; the dead letters of B equal A's. The JobManager logged a restore
from a savepoint for each rescale. The collaborative-filtering vectors (user_cf /
item_cf) depend on timing and are not compared.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ops import stack
from ops.infra import flink_cluster, kafka_broker, redis_server
from ops.infra.jars import ensure_jars
from personalization import feature_store as fs
from personalization.settings import Settings
from tests.faults.test_fault_tolerance import (
    DAY_MS,
    HOUR_MS,
    ITEM_VIEW,
    USER_VIEW,
    build_run,
    by_field,
    compare_rows,
    dead_letters_of,
    drain,
    file_mismatches,
    normalized_item,
    normalized_trigger,
    normalized_user,
    private_settings,
    probe_ready,
    produce_raw,
    read_topic,
    read_view,
    redis_client,
    report,
    send,
    send_clock,
    send_tail,
    split,
    wait_triggers,
)
from tests.faults.test_taskmanager_kills import (
    ClusterStack,
    job_diagnosis,
    jobmanager_log,
    stop_everything,
)
from traffic.replay import dataset_path, load_taobao

pytestmark = [pytest.mark.faults, pytest.mark.deploy, pytest.mark.integration]

TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv.gz"
ROWS = 4_000
PHASES = (1, 2, 1)  # parallelism of the job for each chunk
# Vertex metrics (read-records per subtask) refreshed every second, not every 10 s.
CLUSTER_CONFIG = {"metrics.fetcher.update-interval": 1000}


def at_parallelism(settings: Settings, n: int) -> Settings:
    """At parallelism 1 with the item side apart (``flink.separate_item_side``), so the
    job fills the cluster's two TaskManagers at either parallelism: the savepoints then
    also cross between the two slot layouts (no state depends on them)."""
    flink = settings.flink.model_copy(update={"parallelism": n, "separate_item_side": n == 1})
    assert flink.taskmanagers == max(PHASES)
    return settings.model_copy(update={"flink": flink})


def submit(ctx: ClusterStack, n: int, savepoint: Any = None) -> str:
    settings = at_parallelism(ctx.settings, n)
    ctx.job_id = flink_cluster.submit_python_job(
        settings,
        "flink_jobs.user_features_job",
        ["--settings-json", settings.model_dump_json(), "--restore", "none"],
        parallelism=n,
        savepoint=savepoint,
    )
    try:
        flink_cluster.wait_for_job_state(ctx.settings, ctx.job_id, ["RUNNING"], timeout_s=120)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{job_diagnosis(ctx)}") from None
    return ctx.job_id


def operator(ctx: ClusterStack, name: str = "user features") -> dict[str, Any]:
    job = flink_cluster._rest(ctx.settings, f"/jobs/{ctx.job_id}")
    (vertex,) = [v for v in job["vertices"] if name in v["name"]]
    return flink_cluster._rest(ctx.settings, f"/jobs/{ctx.job_id}/vertices/{vertex['id']}")


def user_operator(ctx: ClusterStack) -> dict[str, Any]:
    return operator(ctx, "user features")


def taskmanagers_of(ctx: ClusterStack, name: str) -> set[str]:
    """The TaskManagers the subtasks of the vertex named ``name`` run in."""
    return {
        str(s.get("taskmanager-id") or s.get("endpoint")) for s in operator(ctx, name)["subtasks"]
    }


def spread(ctx: ClusterStack, timeout_s: float = 60) -> list[tuple[str, int]]:
    """(TaskManager endpoint, records read) of each user-operator subtask, once every
    subtask has read some: the keys really are split over the TaskManagers."""
    deadline = time.monotonic() + timeout_s
    while True:
        subtasks = user_operator(ctx)["subtasks"]
        got = [
            (str(s.get("taskmanager-id") or s.get("endpoint")), int(s["metrics"]["read-records"]))
            for s in subtasks
        ]
        if all(n > 0 for _, n in got):
            return got
        assert time.monotonic() < deadline, f"a user subtask read nothing: {got}"
        time.sleep(1.0)


@pytest.fixture(scope="module")
def rescale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    settings = private_settings(tmp_path_factory.mktemp("rescale-run"))
    assert settings.kafka.partitions >= max(PHASES)
    rows = load_taobao(dataset_path(TAOBAO, settings))
    ordered = sorted(rows, key=lambda r: (r.timestamp_s, r.line_no))[:ROWS]
    now_ms = int(time.time() * 1000)
    first_ms = ordered[0].timestamp_s * 1000
    base = (now_ms - 5 * DAY_MS - first_ms) // HOUR_MS * HOUR_MS
    # A about five days ago on a whole hour, B a day later (event time), as in the
    # fault tests: same windows, sessions and decay exponents, times shifted by a day.
    runs = {
        "ra-": build_run("ra-", ordered, base, handmade=True),
        "rb-": build_run("rb-", ordered, base + DAY_MS, handmade=True),
    }
    ctx = ClusterStack(settings, runs, redis_client(settings), time.time())
    try:
        ensure_jars(settings)
        redis_server.start(settings)
        kafka_broker.start(settings)
        kafka_broker.ensure_topics(settings)
        stack.feast_apply(settings)
        flink_cluster.start(settings, taskmanagers=max(PHASES), extra_config=CLUSTER_CONFIG)
        stack.start_component(settings, stack.WRITER)
        submit(ctx, PHASES[0])
        probe_ready(ctx, first_ms + base - HOUR_MS, timeout_s=240)
        print(f"\n[rescale] stack ready in {time.time() - ctx.started_at:.1f}s, job {ctx.job_id}")
        yield ctx
    finally:
        leftovers = stop_everything(ctx)
    assert not leftovers, f"cluster processes left after flink_cluster.stop: {leftovers}"


def test_rescale_from_savepoints_keeps_every_feature(rescale_stack: ClusterStack) -> None:
    ctx = rescale_stack
    settings = ctx.settings
    a, b = ctx.runs["ra-"], ctx.runs["rb-"]
    started = time.monotonic()

    # Run A, the reference that never rescales: all at once at parallelism 1, then one
    # more event per user and the clock that fires its timers.
    produce_raw(settings, a.dlq)
    sent_a = send(settings, a.events)
    drain(ctx, a, timeout_s=180)
    send_tail(settings, a)
    drain(ctx, a, timeout_s=120)
    send_clock(settings, a)
    triggers_a = wait_triggers(ctx, a)
    run_a_s = time.monotonic() - started

    # Run B in three chunks, the job rescaled between them: 1 -> 2 -> 1.
    chunks, dlq_chunks = split(b.events, len(PHASES)), split(b.dlq, len(PHASES))
    savepoint_root = settings.run_path / "savepoints"
    phases: list[dict[str, Any]] = []
    sent_b = 0
    for k, n in enumerate(PHASES):
        if k > 0:
            # Taken while the job may still be behind on the previous chunk: the
            # savepoint holds whatever the state and the Kafka offsets are at that point.
            # Stop-with-savepoint, not savepoint-then-cancel: a checkpoint completed in
            # between commits trigger transactions that the restore redoes (a duplicate
            # trigger record, seen with savepoint + cancel).
            point = flink_cluster.stop_with_savepoint(settings, ctx.job_id, savepoint_root)
            submit(ctx, n, savepoint=point)
            phases[-1]["savepoint"] = point.name
        job = flink_cluster._rest(settings, f"/jobs/{ctx.job_id}")
        assert {v["parallelism"] for v in job["vertices"] if "user features" in v["name"]} == {n}
        produce_raw(settings, dlq_chunks[k])
        sent_b += send(settings, chunks[k])
        phase: dict[str, Any] = {"job": ctx.job_id[:8], "parallelism": n}
        if n > 1:
            phase["user subtasks (tm, records)"] = placement = spread(ctx)
            assert len({tm for tm, _ in placement}) == n, placement
        else:
            # The item side apart: the user and item operators in different TaskManagers.
            user_tms, item_tms = (
                taskmanagers_of(ctx, "user features"),
                taskmanagers_of(ctx, "item popularity"),
            )
            phase["user / item operator's TaskManager"] = (user_tms, item_tms)
            assert len(user_tms) == len(item_tms) == 1 and user_tms != item_tms, phase
        phases.append(phase)

    drain_b = drain(ctx, b, timeout_s=240)
    file_diffs = file_mismatches(b, read_view(settings, USER_VIEW, b.users()))
    # One more event per user: every user's row is emitted again from the state the
    # last restore handed the job (must count the file's events plus this one).
    send_tail(settings, b)
    tail_b = drain(ctx, b, timeout_s=120)
    send_clock(settings, b)
    triggers_b = wait_triggers(ctx, b)

    restores = [
        line
        for line in jobmanager_log(settings).splitlines()
        if "from Savepoint" in line and "Restoring job" in line
    ]
    a_users = read_view(settings, USER_VIEW, a.users())
    b_users = read_view(settings, USER_VIEW, b.users())
    a_items = read_view(settings, ITEM_VIEW, a.items())
    b_items = read_view(settings, ITEM_VIEW, b.items())
    user_diffs = compare_rows(a_users, b_users, a, b, normalized_user)
    item_diffs = compare_rows(a_items, b_items, a, b, normalized_item)
    keys_a = Counter(normalized_trigger(r, a) for r in triggers_a)
    keys_b = Counter(normalized_trigger(r, b) for r in triggers_b)
    handmade_b = Counter(r["trigger"] for r in triggers_b if "hm-" in r["user_id"])
    copies_b = Counter(json.dumps(r, sort_keys=True) for r in triggers_b)
    duplicates_b = sum(c - 1 for c in copies_b.values() if c > 1)
    dlq = read_topic(settings, settings.kafka.dlq_topic)
    dlq_a = Counter(r["reason"] for r in dead_letters_of(dlq, a.prefix))
    dlq_b = Counter(r["reason"] for r in dead_letters_of(dlq, b.prefix))
    report(
        "rescale from savepoints, parallelism 1 -> 2 -> 1",
        {
            "events": f"A {sent_a}, B {sent_b} (+ {len(b.dlq)} invalid each; B in "
            f"{len(PHASES)} chunks), then 1 tail event per user ({len(b.user_events)})",
            "phases of B": phases,
            "restores from savepoints logged": len(restores),
            "users compared": f"{len(a_users)} x {len(fs.feature_kinds(USER_VIEW))} features",
            "items compared": f"{len(a_items)} x {len(fs.feature_kinds(ITEM_VIEW))} features",
            "user feature differences": f"{len(user_diffs)} {by_field(user_diffs)}",
            "item feature differences": f"{len(item_diffs)} {by_field(item_diffs)}",
            "B vs file differences": len(file_diffs),
            "triggers A / B": f"{dict(Counter(r['trigger'] for r in triggers_a))} / "
            f"{dict(Counter(r['trigger'] for r in triggers_b))}",
            "trigger record differences": sum((keys_a - keys_b).values())
            + sum((keys_b - keys_a).values()),
            "duplicate triggers in B": duplicates_b,
            "DLQ A / B": f"{dict(dlq_a)} / {dict(dlq_b)}",
            "drain B / B tail (s)": f"{drain_b:.1f} / {tail_b:.1f}",
            "run A / test time (s)": f"{run_a_s:.1f} / {time.monotonic() - started:.1f}",
        },
    )
    assert sent_a == sent_b == len(a.events)
    assert len(restores) == len(PHASES) - 1, restores
    assert not file_diffs, file_diffs[:20]
    assert not user_diffs, user_diffs[:20]
    assert not item_diffs, item_diffs[:20]
    assert handmade_b == b.handmade_triggers, (handmade_b, b.handmade_triggers)
    assert keys_a == keys_b, ((keys_a - keys_b).most_common(5), (keys_b - keys_a).most_common(5))
    assert duplicates_b == 0
    assert sum(dlq_b.values()) == len(b.dlq) and dlq_a == dlq_b, (dlq_a, dlq_b)
