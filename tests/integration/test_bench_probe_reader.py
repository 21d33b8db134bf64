"""The freshness bench's probe read: one field of the row serving reads, seen exactly when
the writer's row is (bench/freshness.ProbeRowReader), on a real Redis."""

from __future__ import annotations

import pytest

from bench.freshness import ProbeRowReader
from feature_repo.names import USER_PROFILE
from personalization.feature_updates import FeatureUpdate
from personalization.online_store import OnlineStoreWriter
from personalization.settings import Settings
from serving.online_features import UserFeatureReader

pytestmark = pytest.mark.integration


def test_the_probe_reads_last_seen_of_the_row_serving_reads(redis_server: Settings) -> None:
    settings = redis_server.model_copy(
        update={"feast": redis_server.feast.model_copy(update={"project": "pz_probe_test"})}
    )
    writer = OnlineStoreWriter(settings)
    probe = ProbeRowReader(settings, "probe-user")
    serving = UserFeatureReader(settings)
    try:
        assert probe.last_seen_ms() is None  # no row yet
        for seen_ms in (1_700_000_000_000, 1_700_000_000_250):
            row = {"last_seen_ms": seen_ms, "first_seen_ms": 1_690_000_000_000}
            writer.write([FeatureUpdate(USER_PROFILE, "probe-user", seen_ms * 1000, row)])
            features = serving.read("probe-user")
            assert features is not None and features.last_seen_ms == seen_ms
            assert probe.last_seen_ms() == seen_ms
    finally:
        probe.close()
        serving.close()
        writer.redis.close()
