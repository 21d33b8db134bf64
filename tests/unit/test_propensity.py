"""The click-propensity model: job-side training, labels, and serving-side scoring agree."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flink_jobs import attribution, propensity
from flink_jobs.attribution import Attribution
from personalization.events import CLICK, Event
from personalization.exposures import Exposure
from personalization.model_versions import ModelVersion, averaged, shard_of
from personalization.settings import LearningSettings, Settings
from serving import candidates as cand
from serving.catalog import ItemRow, build_snapshot
from serving.online_features import UserFeatures
from serving.propensity import FEATURES, PropensityModel, feature_columns
from serving.ranking import RankingParams, rank

T0 = 1_700_000_000_000


def synthetic_examples(n: int, seed: int = 7) -> list[propensity.Example]:
    """Clicks depend on co-visitation and fatigue, not on trending (a known truth)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {name: rng.random() for name in FEATURES}
        z = -2.0 + 3.0 * x["src_covisitation"] - 2.0 * x["shown_before"]
        clicked = rng.random() < 1 / (1 + np.exp(-z))
        out.append(propensity.Example(f"r{i}", f"i{i}", x, clicked, T0 + i))
    return out


def test_trainer_learns_the_signal_and_reports_prequential_quality():
    trainer = propensity.new_trainer(LearningSettings())
    for example in synthetic_examples(4000):
        propensity.learn(trainer, example)
    version = propensity.cut_version(trainer)
    weights = version.params["weights"]
    assert weights["src_covisitation"] > 0.5
    assert weights["shown_before"] < -0.3
    assert abs(weights["src_trending"]) < weights["src_covisitation"] / 2
    assert version.metrics["roc_auc"] > 0.6
    assert version.version == "v000004000" and version.examples == 4000
    assert version.created_ms == T0 + 3999
    assert not propensity.due(trainer, 500)


def test_versions_are_deterministic_in_the_example_stream():
    def run() -> ModelVersion:
        trainer = propensity.new_trainer(LearningSettings())
        for example in synthetic_examples(600):
            propensity.learn(trainer, example)
        return propensity.cut_version(trainer)

    assert run() == run()  # a replay after a restore publishes the same version


def test_the_learner_role_and_the_job_functions_train_the_same_model():
    by_example = propensity.new_trainer(LearningSettings())
    by_role = propensity.Trainer.from_settings(LearningSettings())
    for e in synthetic_examples(600):
        propensity.learn(by_example, e)
        by_role.learn_one("u", e.item_id, float(e.clicked), e.time_ms, e.features)
    assert propensity.cut_version(by_role) == propensity.cut_version(by_example)
    x = synthetic_examples(1, seed=9)[0].features
    assert by_role.predict_one("u", "i", x) == pytest.approx(
        by_example.model.predict_proba_one(x)[True]
    )
    # Non-finite features are dropped, as when learning, rather than poisoning a score.
    assert by_role.predict_one("u", "i", {**x, "price": float("nan")}) == by_role.predict_one(
        "u", "i", {k: v for k, v in x.items() if k != "price"}
    )


def test_serving_scores_exactly_what_river_predicts():
    trainer = propensity.new_trainer(LearningSettings())
    for example in synthetic_examples(1500):
        propensity.learn(trainer, example)
    model = PropensityModel.from_version(propensity.cut_version(trainer))
    rows = [ItemRow(f"i{i}", "c", 10.0 * (i + 1), float(10 - i), T0, T0) for i in range(5)]
    catalog = build_snapshot(rows, built_ms=T0)
    rng = np.random.default_rng(3)
    sources = [cand.SourceScores(s, rng.random(len(catalog))) for s in cand.SOURCES]
    user = UserFeatures("u", segments=["buyer", "mobile"], item_impressions={"i1": (2, T0)})
    columns = feature_columns(sources, catalog, user, cap=3)
    scores = model.score(columns)
    for position, logged in enumerate(columns.rows(range(len(catalog)))):
        river = trainer.model.predict_proba_one(logged)[True]
        assert scores[position] == pytest.approx(river, abs=2e-3)  # rounding of logging
    assert columns.rows([1])[0]["shown_before"] == pytest.approx(2 / 3, abs=1e-4)
    assert columns.user == {"user_new": 0.0, "user_buyer": 1.0, "user_mobile": 1.0}


def exposure(features=True) -> Exposure:
    items = ("a", "b", "c")
    logged = tuple({"src_cf": 0.1 * i} for i in range(3)) if features else ()
    return Exposure("rec-1", "u", "", "", "hybrid_v2", items, T0, ("x",) * 3, logged)


def click(item: str, t: int) -> Event:
    return Event(f"e-{item}-{t}", "u", CLICK, t, item_id=item, properties={"rec_id": "rec-1"})


def test_attribution_labels_shown_items_within_the_label_window():
    window, label = 60_000, 10_000
    state = Attribution("rec-1")
    attribution.add_outcome(state, click("b", T0 + 2_000), window)  # before the exposure
    attribution.add_exposure(state, exposure(), window)
    attribution.add_outcome(state, click("c", T0 + 30_000), window)  # after the label window
    assert attribution.label_time(state, label) == T0 + label + 1
    examples = attribution.labelled_examples(state, label)
    assert [(e.item_id, e.clicked) for e in examples] == [("a", False), ("b", True), ("c", False)]
    assert examples[1].features == {"src_cf": 0.1}
    assert attribution.label_time(state, label) is None  # labelled once
    assert state.clicks == 2  # the A/B record still counts both clicks


def test_exposures_without_logged_features_yield_no_examples():
    state = Attribution("rec-1")
    attribution.add_exposure(state, exposure(features=False), 60_000)
    assert attribution.label_time(state, 10_000) is None


def test_hybrid_v2_uses_the_model_and_explains_it():
    settings = Settings()
    params = RankingParams.from_settings(settings, "hybrid_v2")
    rows = [ItemRow(f"i{i}", f"c{i % 3}", 5.0 + i, 1.0 + (i % 4), T0, T0) for i in range(30)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c1", 3.0)], recent_items=["i1"], features_age_ms=5)
    without = rank(user, catalog, 5, T0, params=params)
    # A model that loves price: expensive items climb, and say why.
    model = PropensityModel("v1", {"price": 30.0}, -11.0)
    with_model = rank(user, catalog, 5, T0, params=params, propensity=model)
    assert [i.item_id for i in with_model.items] != [i.item_id for i in without.items]
    assert any(i.source == cand.PROPENSITY for i in with_model.items)
    assert len(with_model.logged_features) == 5
    assert set(with_model.logged_features[0]) == set(FEATURES)


def test_sharded_learners_average_to_a_model_that_learns_the_signal():
    """Examples spread over keyed shards by rec id; the shards' example-weighted average
    (what the registry publishes) keeps the signal of one learner trained on all."""
    shards = 4
    examples = synthetic_examples(8000)
    keys = [propensity.shard_key(e.rec_id, shards) for e in examples]
    assert set(keys) == {f"propensity/{n}" for n in range(shards)}  # every shard is used
    assert keys == [propensity.shard_key(e.rec_id, shards) for e in examples]  # stable
    trainers = {key: propensity.new_trainer(LearningSettings()) for key in set(keys)}
    for key, example in zip(keys, examples, strict=True):
        propensity.learn(trainers[key], example)
    versions = [
        propensity.cut_version(trainer, propensity.shard_of_key(key), shards)
        for key, trainer in sorted(trainers.items())
    ]
    assert [shard_of(v) for v in versions] == [(n, shards) for n in range(shards)]
    assert len({v.version for v in versions}) == shards  # distinct changelog entities
    merged = averaged(versions)
    assert shard_of(merged) is None and merged.examples == 8000
    assert merged.version == "v000008000"
    weights = merged.params["weights"]
    assert weights["src_covisitation"] > 0.5 and weights["shown_before"] < -0.3
    manual = sum(v.params["weights"]["src_covisitation"] * v.examples for v in versions) / 8000
    assert weights["src_covisitation"] == pytest.approx(manual, abs=1e-6)
    assert 0.6 < merged.metrics["roc_auc"] <= 1.0
    # Serving loads the average like any version.
    assert PropensityModel.from_version(merged).weights["src_covisitation"] > 0.5


def test_shard_keys_and_cadence():
    assert propensity.shard_of_key("propensity/3") == 3
    assert propensity.shard_of_key("propensity") is None  # the single learner of old jobs
    assert propensity.shard_publish_every(500, 4) == 125
    assert propensity.shard_publish_every(20, 8) == 3
    assert propensity.shard_publish_every(0, 4) == 0  # publishing off stays off
