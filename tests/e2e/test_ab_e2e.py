"""A/B testing end to end on replayed real traffic.

A second gRPC server (same pipeline) runs with an experiments file: control =
``blend_v1``, treatment = ``hybrid_v1``. Real Taobao shoppers' first events build their
profiles through Collect; each then asks for recommendations (assigned by hash, an
exposure goes to Kafka), and their remaining real events are replayed tagged with the
recommendation id. Some shoppers also click the first item they were shown. The job
joins exposures with outcomes in event time; the report must show each variant with
exactly the exposures and clicks the test made, and a significance test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis import ab_report
from personalization.experiments import assign, load_experiments
from personalization.settings import SETTINGS_JSON_ENV, Settings
from serving.client import RecommenderClient
from tests.fixtures_pipeline import extra_server
from tests.identity import stored_id
from traffic.replay import dataset_path, load_taobao
from traffic.sender import TrafficSender

pytestmark = pytest.mark.e2e

EXPERIMENTS = """
experiments:
  - name: ranking-ab
    salt: e2e
    variants:
      - {name: control, strategy: blend_v1, weight: 50}
      - {name: hybrid, strategy: hybrid_v1, weight: 50}
"""


@pytest.fixture(scope="module")
def ab_server(
    grpc_server: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    folder: Path = tmp_path_factory.mktemp("ab")
    (folder / "experiments.yaml").write_text(EXPERIMENTS)
    experiments = {"experiments_file": str(folder / "experiments.yaml")}
    with extra_server(grpc_server, "grpc-server-ab", serving=experiments) as settings:
        yield settings


def test_ab_experiment_on_replayed_taobao_traffic(ab_server: Settings, capsys):
    rows = load_taobao(
        dataset_path("taobao-userbehavior-sample/UserBehavior_sample.csv.gz", ab_server)
    )
    by_user = defaultdict(list)
    for row in rows:
        by_user[row.user_id].append(row)
    shoppers = sorted(
        (u for u, r in by_user.items() if len(r) >= 4), key=lambda u: -len(by_user[u])
    )[:120]
    tag = f"ab{int(time.time())}"
    now = int(time.time() * 1000)
    newest = max(r.timestamp_s for r in rows) * 1000

    def event(row, user, t, **extra):
        return {
            "event_id": f"{tag}-{row.event_id}",
            "user_id": user,
            "event_type": row.event_type,
            # Items get the run's prefix too: the Taobao replay test counts real item ids.
            "item_id": f"{tag}-{row.item_id}",
            "category": row.category_id,
            "event_time": t,
            **extra,
        }

    history = []
    for u in shoppers:
        for row in by_user[u][: len(by_user[u]) // 2]:
            history.append(
                event(row, f"{tag}-{u}", now - 60_000 - (newest - row.timestamp_s * 1000) // 100)
            )
    TrafficSender(ab_server, rate=0).send(history)
    time.sleep(3)  # let the profiles land before asking

    [experiment] = load_experiments(ab_server.serving.experiments_file)
    exposures = Counter()
    clicks = Counter()
    outcomes = []
    with RecommenderClient.from_settings(ab_server) as client:
        for i, u in enumerate(shoppers):
            user = f"{tag}-{u}"
            response = client.recommend(user, k=10)
            assert response.experiment == "ranking-ab"
            # Sticky, by hash of the id serving works with: the pseudonym.
            assert response.variant == assign(experiment, stored_id(ab_server, user)).name
            assert response.items, user
            exposures[response.variant] += 1
            t = int(time.time() * 1000)
            shown = [item.item_id for item in response.items]
            clicked = False
            for n, row in enumerate(by_user[u][len(by_user[u]) // 2 :]):
                props = {"rec_id": response.recommendation_id}
                outcomes.append(event(row, user, t + 1000 + n, properties=props))
                viewed = f"{tag}-{row.item_id}"
                clicked |= viewed in shown and row.event_type in ("product_view",)
            if i % 3 == 0:  # a third of the shoppers click their first recommendation
                outcomes.append(
                    {
                        "event_id": f"{tag}-click-{u}",
                        "user_id": user,
                        "event_type": "click",
                        "item_id": shown[0],
                        "event_time": t + 500,
                        "properties": {"rec_id": response.recommendation_id},
                    }
                )
                clicked = True
            clicks[response.variant] += clicked
    TrafficSender(ab_server, rate=0).send(outcomes)

    # The join emits once event time passes exposure + window: wait it out, then move
    # the watermark with one more (real-time) event.
    window_s = ab_server.features.attribution_window_s
    time.sleep(window_s + ab_server.flink.out_of_orderness_ms / 1000 + 2)
    TrafficSender(ab_server, rate=0).send(
        [
            {
                "event_id": f"{tag}-clock",
                "user_id": f"{tag}-clock",
                "event_type": "page_view",
                "event_time": int(time.time() * 1000),
            }
        ]
    )

    # Exposures carry the id the store uses: the pseudonym (tests/identity.py).
    ours = {stored_id(ab_server, f"{tag}-{u}") for u in shoppers}

    def mine():
        records = [
            r
            for r in ab_report.read_outcomes(ab_server, idle_s=2, max_s=30)
            if r.get("user_id") in ours
        ]
        return records if len(records) >= len(shoppers) else None

    deadline = time.monotonic() + 120
    records = None
    while records is None and time.monotonic() < deadline:
        records = mine()
    assert records is not None, "attribution records did not arrive"
    totals = ab_report.totals_by_variant(records)["ranking-ab"]
    assert {v: t.impressions for v, t in totals.items()} == dict(exposures)
    assert {v: t.clicks for v, t in totals.items()} == dict(clicks)
    assert set(totals) == {"control", "hybrid"}

    # The CLI prints the same report, with the significance tests.
    cli = subprocess.run(
        [sys.executable, "-m", "ops.cli", "ab-results", "--experiment", "ranking-ab"],
        env={**os.environ, SETTINGS_JSON_ENV: ab_server.model_dump_json()},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    print(cli.stdout)
    assert "experiment ranking-ab" in cli.stdout
    assert "hybrid vs control ctr" in cli.stdout and "P(beats control)" in cli.stdout
    for variant, shown in exposures.items():
        line = next(x for x in cli.stdout.splitlines() if x.startswith(variant))
        assert line.split()[2] == str(shown), line  # lists shown, as the test counted
