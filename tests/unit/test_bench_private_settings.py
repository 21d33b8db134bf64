"""A bench's private stack takes its own ports and run directory, and every other setting
from the environment, as the stack itself would (PZ_<SECTION>__<FIELD>)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.env import private_settings
from personalization.settings import Settings


def test_environment_overrides_reach_the_sections_the_bench_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PZ_FLINK__CHECKPOINT_INTERVAL_MS", "7777")
    monkeypatch.setenv("PZ_KAFKA__PARTITIONS", "2")
    monkeypatch.setenv("PZ_REDIS__PORT", "1")  # the bench's own port wins
    settings = private_settings(tmp_path)
    assert settings.flink.checkpoint_interval_ms == 7777
    assert settings.kafka.partitions == 2
    assert settings.redis.port != 1 and settings.redis.host == "127.0.0.1"
    assert settings.run_dir == str(tmp_path)


def test_what_points_outside_the_private_stack_is_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PZ_REDIS__CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")
    monkeypatch.setenv("PZ_FLINK__CHECKPOINT_DIR", "/elsewhere/checkpoints")
    monkeypatch.setenv("PZ_HISTORY__DIR", "/elsewhere/history")
    monkeypatch.setenv("PZ_FEAST__REGISTRY_PATH", "/elsewhere/registry.db")
    settings = private_settings(tmp_path)
    assert not settings.redis.cluster_nodes
    assert settings.flink.checkpoint_dir == settings.history.dir == ""
    assert settings.feast.registry_path == ""
    assert settings.checkpoint_path.is_relative_to(tmp_path.resolve())


def test_private_ports_are_distinct_and_not_the_defaults(tmp_path: Path):
    settings = private_settings(tmp_path)
    defaults = Settings()
    ports = [
        settings.redis.port,
        settings.kafka.controller_port,
        settings.flink.rest_port,
        settings.flink.rpc_port,
        settings.serving.port,
        settings.metrics.job_port,
        settings.metrics.writer_port,
        settings.metrics.serving_port,
        settings.metrics.dashboard_port,
    ]
    assert len(set(ports)) == len(ports)
    assert settings.redis.port != defaults.redis.port
    assert settings.kafka.bootstrap_servers != defaults.kafka.bootstrap_servers
