"""``bench ingest --parallelism N`` (N > 1): the job on the local standalone cluster.

In thread mode every slot of a TaskManager shares its one embedded Python interpreter,
so parallelism only pays across TaskManager processes: the cluster here is N
TaskManagers x 1 slot (``ops.infra.flink_cluster``), the job submitted with ``flink run
-p N`` as ``personalize up --parallelism N`` does, and the trivial baseline job
(``bench/trivial_job.py``) afterwards on the same cluster at the same parallelism.

What changes in the figures at N > 1: each TaskManager's interpreter serves the job's
counters on a port of its own (``MetricsSettings.taskmanager_job_port``; the cluster
tells each TaskManager its index), and the sampler sums them. Events consumed come from
the JobManager's REST API: ``write-records`` of the source vertex (the chain Kafka
source -> parse), summed over its subtasks, which is every accepted event plus every
dead letter, as ``pz_job_events_total + pz_job_dead_letters_total`` at N = 1.
CPU is measured per TaskManager process session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from flink_jobs import event_source
from ops.infra import flink_cluster
from personalization.settings import Settings

# The full job's events table (flink_jobs/event_source.py) and the trivial job's source.
SOURCE_VERTICES = (f"Source: {event_source.TABLE}[", "Source: kafka: behaviour events")
# Vertex metrics through REST are refreshed by the JobManager's fetcher: every second
# here instead of every 10 s, so the samples follow the job.
CLUSTER_CONFIG = {"metrics.fetcher.update-interval": 1000}


@dataclass
class ClusterJob:
    """One job submitted to the local cluster, and what the sampler asks of it."""

    settings: Settings
    module: str
    job_id: str = ""
    extra_args: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def parallelism(self) -> int:
        return self.settings.flink.parallelism

    def submit(self) -> str:
        self.job_id = flink_cluster.submit_python_job(
            self.settings,
            self.module,
            ["--settings-json", self.settings.model_dump_json(), *self.extra_args],
            parallelism=self.parallelism,
        )
        return self.job_id

    def check_running(self) -> None:
        """Raise if the job ended (failed, cancelled, finished)."""
        state = flink_cluster.job_status(self.settings, self.job_id)
        if state in flink_cluster.TERMINAL_STATES:
            raise RuntimeError(f"job {self.job_id} on the cluster is {state}\n{self.diagnosis()}")

    def source_records(self) -> int | None:
        """Records out of the source vertex, all subtasks (None: not known yet)."""
        try:
            job = flink_cluster._rest(self.settings, f"/jobs/{self.job_id}")
        except OSError:
            return None
        for vertex in job.get("vertices", []):
            if str(vertex.get("name", "")).startswith(SOURCE_VERTICES):
                return int((vertex.get("metrics") or {}).get("write-records", 0))
        return None

    def vertex_parallelism(self) -> dict[str, int]:
        job = flink_cluster._rest(self.settings, f"/jobs/{self.job_id}")
        return {str(v["name"])[:60]: int(v["parallelism"]) for v in job.get("vertices", [])}

    def cancel(self) -> None:
        if self.job_id:
            flink_cluster.cancel_job(self.settings, self.job_id)

    def diagnosis(self) -> str:
        try:
            exceptions = flink_cluster._rest(self.settings, f"/jobs/{self.job_id}/exceptions")
            root = str((exceptions.get("exceptionHistory") or {}).get("entries", [])[:1])[:3000]
        except Exception as exc:
            root = f"REST failed: {exc!r}"
        return f"latest exception: {root}"


def start_cluster(settings: Settings) -> dict[str, Any]:
    """N TaskManagers x 1 slot, N = ``settings.flink.taskmanagers``; returns ``/overview``."""
    return flink_cluster.start(
        settings, taskmanagers=settings.flink.taskmanagers, extra_config=CLUSTER_CONFIG
    )


def cluster_sessions(settings: Settings) -> dict[str, int]:
    """Process session of the JobManager and of each TaskManager, for the CPU meter
    (each daemon leads no session of ours: the script that started it did)."""
    out: dict[str, int] = {}
    jm = flink_cluster._jobmanager_pid(settings)
    if jm is not None:
        out["flink jobmanager"] = os.getsid(jm)
    for index, pid in flink_cluster.taskmanager_pids(settings).items():
        out[f"flink taskmanager {index}"] = os.getsid(pid)
    return out
