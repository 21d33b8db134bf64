"""by_weight: the order of the key-function sort, on ties, duplicates of weight, limits."""

from __future__ import annotations

import random

from personalization.ranked import by_weight


def _reference(weights: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))


def test_strongest_first_ties_by_name():
    weights = {"b": 1.0, "a": 1.0, "c": 2.0, "d": 0.5, "aa": 1.0}
    assert by_weight(weights) == [("c", 2.0), ("a", 1.0), ("aa", 1.0), ("b", 1.0), ("d", 0.5)]
    assert by_weight(weights, 2) == [("c", 2.0), ("a", 1.0)]
    assert by_weight(weights, 0) == []
    assert by_weight({}) == []


def test_same_order_as_the_key_function_on_random_weights():
    rng = random.Random(7)
    for _ in range(200):
        # Few distinct weights: many ties, as decayed co-visitation weights have.
        weights = {
            f"i-{rng.randrange(1000)}": rng.choice([1.0, 0.7, 0.49, rng.random()])
            for _ in range(rng.randrange(1, 120))
        }
        n = rng.randrange(1, 60)
        assert by_weight(weights) == _reference(weights)
        assert by_weight(weights, n) == _reference(weights)[:n]


def test_distinct_weights_take_the_one_sort_path_with_the_same_order():
    rng = random.Random(11)
    for _ in range(100):
        weights = {f"i-{k}": rng.random() for k in rng.sample(range(5000), rng.randrange(1, 150))}
        assert len(set(weights.values())) == len(weights)
        n = rng.randrange(1, 80)
        assert by_weight(weights, n) == _reference(weights)[:n]
    # One tie among distinct weights: the names decide between the two.
    assert by_weight({"z": 3.0, "b": 2.0, "a": 2.0, "c": 1.0}) == [
        ("z", 3.0),
        ("a", 2.0),
        ("b", 2.0),
        ("c", 1.0),
    ]
