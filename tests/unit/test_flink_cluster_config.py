"""The local standalone cluster's configuration: N TaskManagers x 1 slot, each with its
own pid file and a memory budget that fits the machine; `personalize up --parallelism`.
(Starting real daemons is tests/deploy/ and tests/faults/.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from ops.cli import build_parser, with_parallelism
from ops.infra import flink_cluster
from personalization.settings import FlinkSettings, Settings


def test_one_slot_per_taskmanager_and_memory_within_the_budget(tmp_path: Path) -> None:
    settings = Settings(run_dir=str(tmp_path), flink=FlinkSettings(parallelism=2))
    conf = yaml.safe_load((flink_cluster.write_conf(settings) / "config.yaml").read_text())
    assert conf["taskmanager.numberOfTaskSlots"] == 1
    assert conf["pipeline.max-parallelism"] == settings.flink.max_parallelism == 128
    assert conf["taskmanager.memory.process.size"] == "2048m"
    for n in (1, 2, 3, 4, 8):
        assert flink_cluster.taskmanager_memory_mb(n) >= flink_cluster.MIN_TASKMANAGER_MEMORY_MB
        assert n * flink_cluster.taskmanager_memory_mb(n) <= max(
            flink_cluster.TASKMANAGERS_MEMORY_BUDGET_MB, n * flink_cluster.MIN_TASKMANAGER_MEMORY_MB
        )
    names = {flink_cluster.taskmanager_pidfile(settings, i).name for i in range(2)}
    assert names == {"flink-pz-tm0-taskexecutor.pid", "flink-pz-tm1-taskexecutor.pid"}
    assert flink_cluster.taskmanager_pids(settings) == {}  # none running


def test_up_takes_a_parallelism() -> None:
    args = build_parser().parse_args(["up", "--parallelism", "2", "--no-traffic"])
    settings = with_parallelism(Settings(), args.parallelism)
    assert settings.flink.parallelism == 2
    assert settings.kafka.partitions % settings.flink.parallelism == 0
    assert with_parallelism(settings, None) is settings


def test_every_taskmanager_serves_job_metrics_on_a_port_of_its_own(monkeypatch) -> None:
    from ops.stack import job_metrics_urls
    from personalization import metrics
    from personalization.settings import MetricsSettings

    m = MetricsSettings(job_port=9464, taskmanager_port_base=9470)
    ports = [m.taskmanager_job_port(i) for i in range(3)]
    assert ports == [9464, 9470, 9471]
    assert len(set(ports) | {m.writer_port, m.serving_port, m.dashboard_port}) == 6
    assert MetricsSettings(job_port=0).taskmanager_job_port(1) == 0  # off stays off
    # The defaults of every process's metrics port stay apart (4 TaskManagers, 4 workers).
    d = Settings()
    tms = {d.metrics.taskmanager_job_port(i) for i in range(4)}
    others = {d.dispatcher.metrics_port, d.metrics.writer_port, d.metrics.dashboard_port}
    assert not tms & (others | {d.metrics.serving_port + i for i in range(4)})
    # The job reads its TaskManager's index from the environment the cluster gives it.
    monkeypatch.setenv(metrics.TASKMANAGER_INDEX_ENV, "2")
    assert metrics.job_metrics_port(m) == 9471
    monkeypatch.delenv(metrics.TASKMANAGER_INDEX_ENV)
    assert metrics.job_metrics_port(m) == 9464  # MiniCluster / TaskManager 0
    two = with_parallelism(Settings(metrics=m), 2)
    assert job_metrics_urls(two) == [
        "http://127.0.0.1:9464/metrics",
        "http://127.0.0.1:9470/metrics",
    ]


def test_the_job_and_the_writer_run_below_serving_priority() -> None:
    from ops import stack
    from personalization.settings import PrioritySettings

    # The class defaults (the test session zeroes them through the environment).
    s = Settings(priority=PrioritySettings())
    assert s.priority.job > s.priority.writer > s.priority.serving == 0
    assert stack.niced(["python", "-m", "x"], 10) == ["nice", "-n", "10", "python", "-m", "x"]
    assert stack.niced(["python"], 0) == ["python"]  # 0 = the caller's own priority
    by_name = {name: pick(s) for name, pick in stack.NICENESS.items()}
    assert by_name[stack.FLINK_JOB.name] == s.priority.job
    assert by_name[stack.SERVER.name] == 0
    assert set(by_name) == {c.name for c in stack.APP_COMPONENTS}


def test_a_started_component_gets_its_scheduling_group_lowered(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pytest

    from ops.infra.processes import lower_session_priority

    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not autogroup.exists() or autogroup.read_text().strip() != "1":
        pytest.skip("no autogroup scheduling on this kernel: the process nice counts alone")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        assert "nice 0" in Path(f"/proc/{child.pid}/autogroup").read_text()
        assert lower_session_priority(child.pid, 7)
        assert "nice 7" in Path(f"/proc/{child.pid}/autogroup").read_text()
        assert not lower_session_priority(child.pid, 0)  # 0 leaves it alone
    finally:
        child.kill()
        child.wait()


def test_the_item_side_apart_doubles_the_taskmanagers_also_at_parallelism_1(
    tmp_path: Path,
) -> None:
    from ops import stack
    from personalization.settings import MetricsSettings

    # Default: parallelism 1 is the MiniCluster, N is N TaskManagers.
    assert not Settings().flink.on_local_cluster
    assert not stack.on_cluster(Settings())
    assert FlinkSettings(parallelism=2).taskmanagers == 2
    apart = FlinkSettings(separate_item_side=True)
    assert apart.taskmanagers == 2 and apart.on_local_cluster
    assert FlinkSettings(parallelism=2, separate_item_side=True).taskmanagers == 4
    m = MetricsSettings(job_port=9464, taskmanager_port_base=9470)
    settings = Settings(run_dir=str(tmp_path), flink=apart, metrics=m)
    assert stack.on_cluster(settings)
    conf_dir = flink_cluster.write_conf(settings)
    assert (conf_dir / "workers").read_text().splitlines() == ["localhost"] * 2
    conf = yaml.safe_load((conf_dir / "config.yaml").read_text())
    assert conf["taskmanager.numberOfTaskSlots"] == 1
    assert conf["parallelism.default"] == 1
    # Either side may be in either TaskManager: both endpoints are read.
    assert stack.job_metrics_urls(settings) == [
        "http://127.0.0.1:9464/metrics",
        "http://127.0.0.1:9470/metrics",
    ]
    assert stack.job_layout(Settings()) == "MiniCluster (one JVM)"
    assert stack.job_layout(settings) == (
        "standalone cluster, 2 TaskManagers x 1 slot, the item side in TaskManagers of its own"
    )
    # with_job_layout turns the item side on (never off) and leaves the rest as it is.
    base = Settings()
    assert stack.with_job_layout(base) is base
    turned = stack.with_job_layout(base, 2, separate_item_side=True)
    assert (turned.flink.parallelism, turned.flink.separate_item_side) == (2, True)
    assert stack.with_job_layout(turned, separate_item_side=False) is turned
    args = build_parser().parse_args(["up", "--separate-item-side", "--no-traffic"])
    assert args.separate_item_side
    assert not build_parser().parse_args(["up", "--no-traffic"]).separate_item_side
