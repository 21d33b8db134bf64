"""The CF model survives a crash of the job: it resumes from the checkpoint, not from
scratch (regression guard for the "model kept only in memory" design it replaced).

Kills the session's Flink job process (SIGKILL, whole process group), restarts it with
``--restore latest`` and checks that the user's next update starts from the factors
learned before the crash, not from the deterministic initial vector.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from flink_jobs.learning import LearnerConfig, init_vector
from ops import stack
from ops.infra.processes import pid_alive, wait_until
from personalization.feature_store import feature_store
from personalization.settings import Settings
from tests.identity import stored_id
from tests.waiting import wait_for
from traffic.sender import TrafficSender

pytestmark = pytest.mark.integration


def test_cf_model_survives_a_job_crash(pipeline: Settings):
    user = f"restore-{uuid.uuid4().hex[:8]}"
    store = feature_store(pipeline)
    now = int(time.time() * 1000)

    def vector() -> np.ndarray | None:
        got = store.get_online_features(
            features=["user_cf:cf_vector"], entity_rows=[{"user_id": stored_id(pipeline, user)}]
        ).to_dict()["cf_vector"][0]
        return np.asarray(got, dtype=np.float32) if got else None

    def send(n: int, start: int, t: int) -> None:
        TrafficSender(pipeline, rate=0).send(
            [
                {
                    "event_id": f"{user}-{start + i}",
                    "user_id": user,
                    "event_type": "add_to_cart",
                    "item_id": f"restore-item-{(start + i) % 7}",
                    "category": "restore",
                    "event_time": t + i,
                }
                for i in range(n)
            ]
        )

    send(20, 0, now)
    learned = wait_for(lambda: _settled(vector), 60, "factors")
    config = LearnerConfig.from_settings(pipeline.learning)
    initial = init_vector(stored_id(pipeline, user), "u", config)
    assert np.linalg.norm(learned - initial) > 0.05, "20 updates should move the factors"

    # Let at least one checkpoint complete after the updates, then crash the job.
    time.sleep(3 * pipeline.flink.checkpoint_interval_ms / 1000)
    process = stack.FLINK_JOB.process(pipeline)
    pid = process.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 30, what="the job to die")
    stack.start_component(pipeline, stack.FLINK_JOB)
    stack.wait_pipeline_ready(pipeline, timeout_s=180)

    send(1, 100, now + 60_000)
    after = wait_for(lambda: _changed(vector, learned), 60, "the next update")
    step = float(np.linalg.norm(after - learned))
    from_scratch = float(np.linalg.norm(after - initial))
    print(
        f"one step after restore moved {step:.4f}; distance to the initial vector "
        f"{from_scratch:.4f}"
    )
    assert step < from_scratch, "the model restarted from scratch instead of the checkpoint"


def _settled(read: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """The vector once two reads a second apart agree (all 20 updates applied)."""
    first = read()
    time.sleep(1.0)
    again = read()
    if first is None or again is None or not np.allclose(first, again):
        return None
    return again


def _changed(read: Callable[[], np.ndarray | None], before: np.ndarray) -> np.ndarray | None:
    now = read()
    return None if now is None or np.allclose(now, before) else now
