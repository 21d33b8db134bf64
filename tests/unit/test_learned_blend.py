"""The learned blend (learned_v1): its head learns a planted signal, exploration over
sources shows every source, the replay's metrics, and serving and the offline replay
score with the same numbers. Pure: no services."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from analysis.blend_learner import BlendLearner, examples_for, in_top, warp_negative
from analysis.evaluation import coverage, evaluate, source_shares
from flink_jobs import propensity
from personalization.events import RATING, Event
from personalization.model_versions import source_feature_weights
from personalization.settings import LearningSettings, RankingSettings, Settings
from serving import candidates as cand
from serving.catalog import ItemRow, build_snapshot
from serving.online_features import UserFeatures
from serving.propensity import FeatureColumns, PropensityModel
from serving.ranking import LEARNED, RankingParams, RankRequest, rank
from serving.rules import DiversityStage, SourceExplorationStage, run_rules

T0 = 1_700_000_000_000


def columns_with_planted_target(rng: random.Random, n: int) -> tuple[FeatureColumns, int]:
    """Random source scores, except that the chosen item is the session source's best."""
    items = {f"src_{s}": np.array([rng.random() for _ in range(n)]) for s in cand.SOURCES}
    target = rng.randrange(n)
    session = items[f"src_{cand.SESSION}"]
    session[target] = session.max() + 0.5
    items[f"src_{cand.SESSION}"] = session / session.max()
    items["price"] = np.zeros(n)
    items["shown_before"] = np.zeros(n)
    return FeatureColumns(items, {"user_new": 0.0, "user_buyer": 0.0, "user_mobile": 0.0}), target


def test_the_head_learns_a_planted_signal_from_the_stream():
    rng = random.Random(5)
    learner = BlendLearner.from_settings(LearningSettings())
    for _ in range(400):
        columns, target = columns_with_planted_target(rng, 60)
        ranking = _ranking_with(columns)
        learner.learn(ranking, target, shown=(), excluded=())
    head = learner.head
    assert head is not None and head.version.startswith("v")
    session = head.weights["src_session"]
    others = [head.weights[f"src_{s}"] for s in cand.SOURCES if s != cand.SESSION]
    assert session > 1.0 and all(abs(w) < session / 3 for w in others)
    # Fresh events: the head ranks the chosen item first every time.
    for _ in range(20):
        columns, target = columns_with_planted_target(rng, 60)
        assert int(head.linear(columns).argmax()) == target


def test_negatives_are_drawn_from_every_source_and_never_the_target_or_excluded():
    n = 40
    items = {f"src_{s}": np.zeros(n) for s in cand.SOURCES}
    for position, s in enumerate(cand.SOURCES):
        items[f"src_{s}"][position] = 1.0  # each source has exactly one candidate
    columns = FeatureColumns(items, {})
    rows = examples_for(
        columns, target=39, shown=[39, 20], excluded={0}, per_source=2, pool=5,
        random_negatives=0, rng=random.Random(1),
    )  # fmt: skip
    assert rows[0][1] is True and all(not chosen for _, chosen in rows[1:])
    by_source = {max(x, key=lambda k: x[k]) for x, _ in rows[1:] if max(x.values()) > 0}
    # Every source's candidate is a negative, except the excluded one (source 0's) ...
    assert by_source == {f"src_{s}" for s in cand.SOURCES[1:]}
    # ... and the shown item that was not chosen (20, no source's), the target not.
    assert len(rows) == 1 + len(cand.SOURCES[1:]) + 1


def test_source_exploration_shows_every_source():
    rows = [ItemRow(f"i{i}", f"c{i % 4}", 1.0, 1.0, T0, T0) for i in range(40)]
    catalog = build_snapshot(rows, built_ms=T0)
    n = len(catalog)
    # Each source's best item is its own, far below the blend's top 10.
    sources = {}
    for s_index, s in enumerate(cand.SOURCES):
        scores = np.zeros(n)
        scores[30 + s_index] = 1.0
        sources[s] = scores
    params = RankingParams(strategy=LEARNED, exploration_share=0.2, category_cap_share=1.0)
    drawn: Counter[str] = Counter()
    for seed in range(200):
        request = RankRequest(UserFeatures("u"), catalog, k=10, now_ms=T0, params=params, seed=seed)
        score = np.linspace(1.0, 0.0, n)  # the blend prefers the first items
        slate = run_rules(
            (DiversityStage(), SourceExplorationStage()),
            request,
            score,
            personalized=True,
            sources=sources,
        )
        assert len(slate.chosen) == 10 and len(set(slate.chosen)) == 10
        for position, source in slate.explored_sources.items():
            assert sources[source][position] == 1.0  # the drawn source's best item
        drawn.update(slate.explored_sources.values())
    assert set(drawn) == set(cand.SOURCES)  # every source was shown
    assert min(drawn.values()) > 200 * 2 / len(cand.SOURCES) / 3  # and none is starved


def test_learned_strategy_explores_over_sources_in_serving():
    rows = [ItemRow(f"i{i}", f"c{i % 5}", 1.0, 1.0 + i % 7, T0, T0) for i in range(50)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c1", 2.0), ("c2", 1.0)], recent_items=["i3", "i8"])
    settings = Settings(ranking=RankingSettings(exploration_share=0.2))
    params = RankingParams.from_settings(settings, LEARNED)
    explored = [
        item
        for seed in range(30)
        for item in rank(user, catalog, 10, T0, params=params, seed=seed).items
        if item.source == "exploration"
    ]
    assert len(explored) == 30 * 2


def test_coverage_and_source_shares_by_hand():
    assert coverage({"a", "b"}, 8) == 0.25
    assert coverage(set(), 0) == 0.0
    shares = source_shares({"cf": 1, "covisitation": 3})
    assert shares == {"covisitation": 0.75, "cf": 0.25}
    assert list(shares) == ["covisitation", "cf"]  # largest first
    assert source_shares({}) == {}


def rating(n: int, user: str, item: str) -> Event:
    return Event(
        event_id=f"e{n}",
        user_id=user,
        event_type=RATING,
        event_time_ms=1_000_000 + n * 1000,
        item_id=item,
        category="movies",
        properties={"rating": "4"},
    )


def test_replay_reports_coverage_and_source_shares():
    events = [rating(i, f"u{i % 4}", f"m{(i * 7) % 31}") for i in range(40)]
    popularity = RankingParams(
        strategy="eval", weights=((cand.TRENDING, 1.0),), exclude_recent=0, category_cap_share=1.0
    )
    result = evaluate(events, {"popularity": popularity}, k=2)
    m = result.methods["popularity"]
    assert result.catalog_items == 31
    assert sum(m.sources.values()) == 2 * m.events  # every tested event showed 2 items
    assert set(m.sources) == {cand.TRENDING}
    assert 0 < result.coverage("popularity") <= 1
    assert result.coverage("popularity") == len(m.shown) / 31


def test_replay_trains_the_learned_blend_and_ranks_with_it():
    events = [rating(i, f"u{i % 5}", f"m{(i * 3) % 37}") for i in range(120)]
    learned = RankingParams.from_settings(Settings(), LEARNED)
    head = LearningSettings(blend_refresh_every=10)
    result = evaluate(events, {LEARNED: learned}, k=3, head=head)
    m = result.methods[LEARNED]
    assert m.events == 120 and 0 <= m.hit_rate <= 1
    assert sum(m.sources.values()) == 3 * 120


def test_session_gap_tests_only_events_within_a_session():
    events = [rating(0, "u1", "a"), rating(1, "u1", "b"), rating(5000, "u1", "c")]
    events.append(rating(5001, "u2", "a"))
    popularity = RankingParams(strategy="eval", weights=((cand.TRENDING, 1.0),))
    all_events = evaluate(events, {"p": popularity}, k=1)
    sessions = evaluate(events, {"p": popularity}, k=1, session_gap_s=60)
    assert all_events.events == 4
    assert sessions.events == 1  # only u1's b follows an interaction within 60 s


def test_serving_and_the_replay_score_the_same_features_identically():
    # A head learnt by the replay's learner, published as serving loads versions.
    rng = random.Random(3)
    learner = BlendLearner.from_settings(LearningSettings(blend_refresh_every=50))
    for _ in range(100):
        columns, target = columns_with_planted_target(rng, 30)
        learner.learn(_ranking_with(columns), target, shown=(), excluded=())
    head = learner.head
    assert head is not None
    rows = [ItemRow(f"i{i}", f"c{i % 3}", 5.0 + i, 1.0 + (i % 4), T0, T0) for i in range(30)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c1", 3.0)], recent_items=["i1", "i4"])
    params = RankingParams.from_settings(Settings(), LEARNED)
    ranking = rank(user, catalog, 5, T0, params=params, propensity=head)
    assert ranking.strategy == LEARNED and ranking.features is not None
    linear = head.linear(ranking.features)
    river = learner.trainer.model
    for item, logged in zip(ranking.items, ranking.logged_features, strict=True):
        position = catalog.index_of[item.item_id]
        # Serving's score is the head's linear score of the features the replay learns
        # from (Ranking.features) ...
        assert item.score == pytest.approx(linear[position], abs=1e-9)
        # ... and what the job's learner (River) predicts for the logged row.
        p = river.predict_proba_one(logged)[True]
        assert item.score == pytest.approx(math.log(p / (1 - p)), abs=1e-3)
        # The replay's training rows are those logged features.
        replay_row = examples_for(ranking.features, position, (), (), 0, 1, 0, rng)[0][0]
        assert replay_row == pytest.approx(logged, abs=1e-4)


def test_without_a_model_the_learned_strategy_ranks_as_its_prior_blend():
    rows = [ItemRow(f"i{i}", f"c{i % 3}", 5.0, 1.0 + (i % 5), T0, T0) for i in range(30)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c2", 3.0)], recent_items=["i2"])
    settings = Settings(ranking=RankingSettings(exploration_share=0.0))
    learned = RankingParams.from_settings(settings, LEARNED)
    ranking = rank(user, catalog, 6, T0, params=learned)
    prior = PropensityModel.prior(dict(learned.weights))
    assert ranking.features is not None
    expected = prior.linear(ranking.features)
    assert [i.score for i in ranking.items] == pytest.approx(
        [expected[catalog.index_of[i.item_id]] for i in ranking.items]
    )
    assert ranking.personalized and len(ranking.logged_features) == 6


def _ranking_with(columns: FeatureColumns):
    """A ranking that carries ``columns`` (what the replay's learner reads)."""
    from serving.ranking import Ranking

    return Ranking([], LEARNED, personalized=True, fallback_reason="", features=columns)


def test_the_learner_is_the_jobs_propensity_trainer():
    learner = BlendLearner.from_settings(LearningSettings())
    assert isinstance(learner.trainer, propensity.Trainer)


@pytest.mark.parametrize("strategy", ["blend_v1", "trending", "hybrid_v1", LEARNED])
def test_every_strategy_logs_the_features_of_every_source(strategy: str):
    from serving.propensity import FEATURES

    rows = [ItemRow(f"i{i}", f"c{i % 3}", 5.0, 1.0 + (i % 5), T0, T0) for i in range(30)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c2", 3.0)], recent_items=["i2", "i5"])
    params = RankingParams.from_settings(Settings(), strategy)
    ranking = rank(user, catalog, 6, T0, params=params)
    assert len(ranking.logged_features) == len(ranking.items) == 6
    assert all(set(row) == set(FEATURES) for row in ranking.logged_features)
    # The logged rows carry every source's score, whichever the strategy weighs (the
    # holdout ignores the user: only trending is known there).
    assert any(row["src_trending"] > 0 for row in ranking.logged_features)
    if strategy != "trending":
        assert any(row["src_interest"] > 0 for row in ranking.logged_features)
        assert any(row["src_content"] > 0 for row in ranking.logged_features)


def test_the_warm_started_head_starts_as_the_prior_blend():
    prior = {cand.COVISITATION: 1.0, cand.CF: 0.3, cand.TRENDING: 0.1}
    learner = BlendLearner.from_settings(LearningSettings(), prior)
    version = PropensityModel.from_version(learner.trainer.cut_version())
    assert version.weights == PropensityModel.prior(prior).weights
    cold = BlendLearner.from_settings(LearningSettings(blend_warm_start=False), prior)
    assert PropensityModel.from_version(cold.trainer.cut_version()).weights == {}


@pytest.mark.parametrize("shown_negatives", [False, True])
def test_shown_items_are_negatives_only_when_configured(shown_negatives: bool):
    rng = random.Random(2)
    cfg = LearningSettings(
        blend_warp_tries=0,  # the sampled rule
        blend_shown_negatives=shown_negatives,
        blend_source_negatives=0,
        blend_random_negatives=0,
    )
    learner = BlendLearner.from_settings(cfg)
    columns, target = columns_with_planted_target(rng, 20)
    shown = [i for i in range(20) if i != target][:5]
    learner.learn(_ranking_with(columns), target, shown=shown, excluded=())
    # Each pair is learnt both ways round: 2 examples per negative.
    assert learner.trainer.examples == (2 * len(shown) if shown_negatives else 0)


def test_warp_draws_only_violating_negatives_and_weights_them_by_rank():
    rng = random.Random(4)
    score = np.zeros(100)
    score[7] = 5.0  # the target, ahead of everything by more than the margin
    assert warp_negative(score, 7, excluded=(), margin=1.0, tries=500, rng=rng) is None
    score[42] = 4.5  # within the margin: the one violator
    score[3] = 9.0  # above the target, but excluded
    for _ in range(50):
        found = warp_negative(score, 7, excluded={3}, margin=1.0, tries=500, rng=rng)
        assert found is not None
        negative, weight = found
        assert negative == 42
        assert 1.0 <= weight <= sum(1.0 / r for r in range(1, 98 + 1))
    # Found at the first draw, the target is estimated last of the 98 allowed: L(98).
    first = warp_negative(np.where(np.arange(100) == 7, 0.0, 1.0), 7, (), 1.0, 1, random.Random(0))
    assert first is not None and first[1] == pytest.approx(sum(1.0 / r for r in range(1, 100)))


def test_warp_learns_nothing_from_an_event_the_head_already_ranks_by_a_margin():
    prior = {cand.SESSION: 5.0}
    learner = BlendLearner.from_settings(LearningSettings(), prior)
    assert learner.warp_tries > 0  # WARP is the default rule
    columns, target = columns_with_planted_target(random.Random(1), 60)
    # The prior ranks the target (the session source's best) first by a margin.
    learner.learn(_ranking_with(columns), target, shown=(), excluded=())
    assert learner.trainer.examples == 0
    # Without the session weight every random item is a violator: one pair, both ways.
    cold = BlendLearner.from_settings(LearningSettings(blend_warm_start=False), prior)
    cold.learn(_ranking_with(columns), target, shown=(), excluded=())
    assert cold.trainer.examples == 2
    assert cold.current().weights["src_session"] > 0


def test_in_top_counts_only_allowed_items_and_splits_ties():
    score = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert not in_top(score, 3, excluded=(), k=3)
    assert in_top(score, 3, excluded={0}, k=3)  # an excluded item is not ahead
    assert in_top(np.zeros(5), 0, (), k=3)  # 4 tied: 2 of them count as ahead
    assert not in_top(np.zeros(9), 0, (), k=3)


@pytest.mark.parametrize("gate_window", [0, 50])
def test_the_gate_keeps_the_prior_while_the_learnt_weights_hit_less(gate_window: int):
    prior = {cand.SESSION: 5.0}  # ranks the planted target first
    cfg = LearningSettings(
        blend_warm_start=False,
        blend_warp_tries=0,
        blend_random_negatives=0,  # the learnt weights stay 0: they never hit
        blend_refresh_every=20,
        blend_gate_window=gate_window,
    )
    learner = BlendLearner.from_settings(cfg, prior, k=3)
    rng = random.Random(6)
    for _ in range(40):
        columns, target = columns_with_planted_target(rng, 30)
        learner.learn(_ranking_with(columns), target, shown=(), excluded=())
    if gate_window:
        assert learner.head is None and learner.gated == 2  # the prior ranks
    else:
        assert learner.head is not None and learner.gated == 0


def _slate(rec: str, scores: list[float], clicked: int) -> list[propensity.Example]:
    return [
        propensity.Example(rec, f"i{n}", {"src_cf": s}, n == clicked, T0)
        for n, s in enumerate(scores)
    ]


def test_the_jobs_gate_counts_each_slates_pairs_for_the_head_and_the_prior():
    trainer = propensity.new_trainer(LearningSettings())
    prior = source_feature_weights({cand.CF: 1.0})
    assert prior == {"src_cf": 1.0}
    # The prior orders (0.9 clicked, 0.1) right and (0.9, 0.95) wrong; the untrained head
    # scores every item alike: two ties, half right each.
    trainer.judge_slate(_slate("r1", [0.9, 0.1, 0.95], clicked=0), prior, window=10**9)
    trainer.judge_slate(_slate("r2", [0.5, 0.6], clicked=-1), prior, window=10**9)  # no click
    quality = trainer.quality()
    assert quality["gate_pairs"] == pytest.approx(2.0)
    assert quality["prior_pair_accuracy"] == pytest.approx(0.5)
    assert quality["head_pair_accuracy"] == pytest.approx(0.5)
    # The evidence decays: with a window of 2 pairs, the newest pair weighs most.
    recent = propensity.new_trainer(LearningSettings())
    recent.judge_slate(_slate("r1", [0.1, 0.9], clicked=1), prior, window=2)  # prior right
    recent.judge_slate(_slate("r2", [0.1, 0.9], clicked=0), prior, window=2)  # prior wrong
    assert recent.quality()["prior_pair_accuracy"] == pytest.approx(0.5 / 1.5)


def test_trainers_from_checkpoints_before_the_gate_load_with_no_evidence():
    trainer = propensity.new_trainer(LearningSettings())
    trainer.learn_one("u", "i", 1.0, T0, {"src_cf": 1.0})
    before_the_gate = ("model", "auc", "log_loss", "examples", "positives", "last_time_ms")
    state = (None, {name: getattr(trainer, name) for name in (*before_the_gate, "published")})
    restored = propensity.Trainer.__new__(propensity.Trainer)
    restored.__setstate__(state)
    assert restored.examples == 1 and restored.pairs == 0.0
    assert "gate_pairs" not in restored.quality()


def test_serving_ranks_with_the_published_head_only_once_it_beats_the_prior():
    rows = [ItemRow(f"i{i}", f"c{i % 3}", 5.0 + i, 1.0 + (i % 5), T0, T0) for i in range(30)]
    catalog = build_snapshot(rows, built_ms=T0)
    user = UserFeatures("u", interests=[("c2", 3.0)], recent_items=["i2"], events_total=9)
    params = RankingParams.from_settings(
        Settings(ranking=RankingSettings(exploration_share=0.0, learned_head_min_pairs=100)),
        LEARNED,
    )
    prior_order = [i.item_id for i in rank(user, catalog, 6, T0, params=params).items]
    loves_price = {"price": 30.0}

    def order(gate: dict[str, float]) -> list[str]:
        head = PropensityModel("v9", loves_price, 0.0, gate)
        ranking = rank(user, catalog, 6, T0, params=params, propensity=head)
        return [i.item_id for i in ranking.items]

    losing = {"gate_pairs": 500.0, "head_pair_accuracy": 0.6, "prior_pair_accuracy": 0.7}
    too_few = {"gate_pairs": 50.0, "head_pair_accuracy": 0.9, "prior_pair_accuracy": 0.7}
    winning = {"gate_pairs": 500.0, "head_pair_accuracy": 0.8, "prior_pair_accuracy": 0.7}
    assert order(losing) == prior_order
    assert order(too_few) == prior_order
    assert order(winning) != prior_order
    # A version cut before the gate existed carries no evidence and is used, as then.
    assert order({}) == order(winning)


def test_a_version_carries_the_gate_to_serving():
    trainer = propensity.new_trainer(LearningSettings())
    trainer.judge_slate(_slate("r1", [0.9, 0.1], clicked=0), {"src_cf": 1.0}, window=100)
    model = PropensityModel.from_version(trainer.cut_version())
    assert model.gate == {
        "gate_pairs": 1.0,
        "head_pair_accuracy": 0.5,
        "prior_pair_accuracy": 1.0,
    }
    assert not model.beats_prior(min_pairs=0)
