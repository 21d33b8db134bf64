"""How long things are kept: the Redis key TTL and the per-topic Kafka retention derived
from the settings, and the orders the settings refuse to break (pure: nothing connects)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ops.infra.kafka_broker import topic_configs
from personalization import feature_store as fs
from personalization.settings import KafkaSettings, PrivacySettings, Settings

DAY_MS = 24 * 3600 * 1000


def test_redis_key_ttl_is_the_retention_and_zero_turns_it_off(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PZ_PRIVACY__RETENTION_DAYS", "7")
    settings = Settings(run_dir=str(tmp_path))
    assert settings.privacy.retention_days == 7
    assert fs.key_ttl_s(settings) == 7 * 86400
    assert fs.repo_config(settings).online_store.key_ttl_seconds == 7 * 86400
    monkeypatch.setenv("PZ_PRIVACY__RETENTION_DAYS", "0")
    off = Settings(run_dir=str(tmp_path))
    assert fs.key_ttl_s(off) is None
    assert fs.repo_config(off).online_store.key_ttl_seconds is None
    with pytest.raises(ValidationError):
        PrivacySettings(retention_days=-1)


def test_every_topic_has_a_retention_dead_letters_shortest_audit_longest() -> None:
    settings = Settings()
    k = settings.kafka
    configs = topic_configs(settings)
    assert set(configs) == set(k.all_topics)
    # The item catalog is compacted: the newest record of every item is kept, by key.
    assert configs.pop(k.catalog_topic) == {"cleanup.policy": "compact"}
    assert all("retention.ms" in c for c in configs.values())
    feed = configs.pop(k.item_factors_topic)
    assert feed["retention.ms"] == "-1" and int(feed["retention.bytes"]) > 0
    timed = {topic: int(c["retention.ms"]) for topic, c in configs.items()}
    assert min(timed, key=timed.__getitem__) == k.dlq_topic
    assert max(timed, key=timed.__getitem__) == k.audit_topic
    assert timed[k.clickstream_topic] == k.retention_ms == 3 * DAY_MS
    assert timed[k.dlq_topic] == DAY_MS
    assert timed[k.exposures_topic] == k.ab_retention_ms


def test_retentions_follow_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PZ_KAFKA__DLQ_RETENTION_MS", "3600000")
    monkeypatch.setenv("PZ_KAFKA__AUDIT_RETENTION_MS", "-1")
    settings = Settings()
    configs = topic_configs(settings)
    assert configs[settings.kafka.dlq_topic]["retention.ms"] == "3600000"
    assert configs[settings.kafka.audit_topic]["retention.ms"] == "-1"


@pytest.mark.parametrize(
    "kafka",
    [
        {"dlq_retention_ms": 4 * DAY_MS},  # dead letters outliving the events
        {"dlq_retention_ms": 0},
        {"audit_retention_ms": DAY_MS},  # an audit trail shorter than what it audits
        {"audit_retention_ms": 0},
        {"retention_ms": -1},
    ],
)
def test_retention_orders_are_enforced(kafka: dict) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(**kafka)


def test_tombstones_must_outlive_the_changelog() -> None:
    with pytest.raises(ValidationError, match="erasure_tombstone_ttl_s"):
        Settings(
            kafka=KafkaSettings(retention_ms=20 * DAY_MS, ab_retention_ms=30 * DAY_MS),
            privacy=PrivacySettings(erasure_tombstone_ttl_s=14 * 86400),
        )
