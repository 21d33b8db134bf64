"""Prequential evaluation and drift detection of the CF learner (pure)."""

from __future__ import annotations

import random

from flink_jobs.learning import LearnerConfig, OnlineMF
from flink_jobs.model_quality import PrequentialMonitor


def test_prequential_hit_rate_rises_on_a_learnable_stream_and_drift_is_flagged():
    model = OnlineMF(LearnerConfig(factors=16, seed=1))
    monitor = PrequentialMonitor(k=10, candidates=100, seed=3)
    rng = random.Random(5)
    items = [f"i{n}" for n in range(400)]

    # Two taste groups: users u0..u99 like items 0..39, users u100..u199 items 200..239.
    def interaction(swap: bool) -> tuple[str, str]:
        u = rng.randrange(200)
        liked = range(0, 40) if (u < 100) != swap else range(200, 240)
        return f"u{u}", items[rng.choice(list(liked))]

    for item in items:  # every item known before evaluation starts
        model.learn_one("warmup", item)
    hits = []
    for _ in range(12_000):
        user, item = interaction(swap=False)
        hit = monitor.evaluate(model, user, item)
        if hit is not None:
            hits.append(hit)
        model.learn_one(user, item)
    early, late = sum(hits[:500]) / 500, sum(hits[-2000:]) / 2000
    assert late > early + 0.2, (early, late)
    assert late > 0.5
    alarms_before = monitor.alarms
    for _ in range(4_000):  # tastes swap: the hit rate collapses, ADWIN must notice
        user, item = interaction(swap=True)
        monitor.evaluate(model, user, item)
        model.learn_one(user, item)
    assert monitor.alarms > alarms_before


def test_new_users_are_not_evaluated():
    model = OnlineMF(LearnerConfig(factors=8))
    for n in range(200):
        model.learn_one("someone", f"i{n}")
    monitor = PrequentialMonitor()
    assert monitor.evaluate(model, "stranger", "i1") is None
    assert monitor.evaluated == 0
