"""Where a bench runs the job: the MiniCluster component, or the local standalone cluster.

``stack.on_cluster`` decides (parallelism > 1, or ``flink.separate_item_side``), as for
``personalize up``. The whole-stack and freshness benches start, stop and meter the job
through these, so both run it where the settings say.
"""

from __future__ import annotations

from typing import Any

from bench.env import BenchStack, say
from ops import stack
from personalization.settings import Settings


def add_separate_item_side_argument(group: Any) -> None:
    """``--separate-item-side``: the benches' switch for ``flink.separate_item_side``
    (read with ``stack.with_job_layout``)."""
    group.add_argument(
        "--separate-item-side",
        action="store_true",
        help="the job's item side in TaskManagers of its own (flink.separate_item_side): "
        "the job on a standalone cluster of 2 x parallelism TaskManagers",
    )


def start_job(bench: BenchStack) -> None:
    if stack.on_cluster(bench.settings):
        stack.start_job(bench.settings, say)
    else:
        bench.start_component(stack.FLINK_JOB)


def stop_job(bench: BenchStack) -> None:
    if stack.on_cluster(bench.settings):
        from ops.infra import flink_cluster

        for job in stack.cluster_jobs(bench.settings):
            flink_cluster.cancel_job(bench.settings, str(job["jid"]))
        say("flink-job: cancelled on the cluster")
    else:
        bench.stop_component(stack.FLINK_JOB)


def stop_cluster(settings: Settings) -> None:
    """The local cluster down, if the job ran on it (the benches' ``finally``)."""
    if stack.on_cluster(settings):
        from ops.infra import flink_cluster

        if flink_cluster.stop(settings):
            say("flink cluster: stopped")


def job_sessions(bench: BenchStack) -> dict[str, int]:
    """Process sessions of the job for the CPU meter: the MiniCluster's process, or the
    JobManager's and every TaskManager's."""
    if stack.on_cluster(bench.settings):
        from bench.ingest.cluster import cluster_sessions

        return cluster_sessions(bench.settings)
    return {"flink-job (+JVM)": bench.component_pid(stack.FLINK_JOB) or 0}
