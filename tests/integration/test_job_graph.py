"""The job's plan has no hidden Python operators (flink_jobs/exchanges.py says why).

Builds the real pipeline on a local environment (a JVM, no services) and reads the
stream graph PyFlink hands to Flink, after its Python operator fusion.
"""

from __future__ import annotations

import json
import os

import pytest

from flink_jobs.python_env import embedded_python_path
from personalization.settings import Settings

# The helpers PyFlink inserts: key_by's AddKey, get_side_output's identity map and a
# Python TimestampAssigner's extractor.
HIDDEN = ("_stream_key_by_map_operator", "Extract-Timestamp", "Map")


@pytest.fixture(scope="module")
def plan(services_settings: Settings, jars: object) -> list[dict[str, object]]:
    os.environ["PYTHONPATH"] = embedded_python_path()
    from flink_jobs.user_features_job import build_pipeline, create_environment

    settings = services_settings  # the connector jar the `jars` fixture fetched
    env = create_environment(settings, None)
    build_pipeline(env, settings)
    nodes: list[dict[str, object]] = json.loads(env.get_execution_plan())["nodes"]
    return nodes


def _inputs(plan: list[dict[str, object]], node_type: str) -> list[tuple[object, object]]:
    """(input node's name, ship strategy) of every input of the nodes of this type."""
    by_id = {n["id"]: str(n["type"]) for n in plan}
    return [
        (by_id.get(p["id"], p["id"]), p.get("ship_strategy"))
        for n in plan
        if n["type"] == node_type
        for p in n.get("predecessors", [])  # type: ignore[attr-defined]
    ]


def test_no_hidden_python_operators(plan: list[dict[str, object]]):
    names = [str(n["type"]) for n in plan]
    hidden = [n for n in names if any(part == h for h in HIDDEN for part in n.split(", "))]
    assert not hidden, f"hidden Python operators in the plan: {hidden}"


def test_every_exchange_is_a_keyed_hash_or_forward(plan: list[dict[str, object]]):
    by_id = {n["id"]: str(n["type"]) for n in plan}
    keyed = {
        by_id[n["id"]]
        for n in plan
        for p in n.get("predecessors", [])  # type: ignore[attr-defined]
        if p.get("ship_strategy") == "HASH"
    }
    assert keyed >= {
        "user features + triggers + CF (user half)",
        "item popularity + CF (item half)",
        "A/B attribution join",
    }
    strategies = {
        p.get("ship_strategy")
        for n in plan
        for p in n.get("predecessors", [])  # type: ignore[attr-defined]
    }
    assert strategies <= {"HASH", "FORWARD", "BROADCAST", "REBALANCE"}


@pytest.mark.parametrize("sink", ["kafka: feature_updates: Writer", "kafka: triggers: Writer"])
def test_sinks_fed_by_both_operators_have_only_all_to_all_inputs(
    plan: list[dict[str, object]], sink: str
):
    """A forward input would make the sink align checkpoint barriers, which deadlocks at
    parallelism > 1 in the diamond user op -> item op -> sink <- user op
    (user_features_job.build_pipeline says how)."""
    sink_inputs = _inputs(plan, sink)
    assert {name for name, _ in sink_inputs} >= {
        "user features + triggers + CF (user half)",
        "item popularity + CF (item half)",
    }, sink_inputs
    assert {strategy for _, strategy in sink_inputs} == {"REBALANCE"}, sink_inputs


def test_cf_is_partitioned_with_the_item_factors_fed_back_by_broadcast(
    plan: list[dict[str, object]],
):
    by_id = {n["id"]: str(n["type"]) for n in plan}
    # No single-learner CF operator (it was keyed by a constant: one subtask).
    assert not [name for name in by_id.values() if "collaborative filtering" in name]
    user_inputs = set(_inputs(plan, "user features + triggers + CF (user half)"))
    assert ("Source: kafka: item factors", "BROADCAST") in user_inputs
    sinks = {str(n["type"]) for n in plan}
    assert "kafka: item factors: Writer" in sinks


def test_a_price_drop_rule_feeds_the_catalog_prices_to_the_item_operator(
    plan: list[dict[str, object]],
):
    """The session's rule file has a price_drop rule, so the item operator also reads the
    catalog topic's prices (flink_jobs/price_drop.py), keyed by item like its events."""
    (item_op,) = [n for n in plan if n["type"] == "item popularity + CF (item half)"]
    inputs = _inputs(plan, str(item_op["type"]))
    assert any("catalog" in str(name) for name, _ in inputs), inputs
    assert {strategy for _, strategy in inputs} == {"HASH"}, inputs
    names = [str(n["type"]) for n in plan]
    assert "Source: kafka: catalog" in names, names


def test_the_item_side_apart_is_a_slot_sharing_group_of_its_own(
    services_settings: Settings, jars: object
) -> None:
    """``flink.separate_item_side``: the item operator, the A/B attribution join, the
    propensity learner and the events' parser (and the sinks chained after them) in the
    item side's group, the user operator and the exposures' parser in the default one, so
    one slot per TaskManager puts the two sides in different processes (different Python
    interpreters)."""
    os.environ["PYTHONPATH"] = embedded_python_path()
    from flink_jobs.user_features_job import ITEM_SIDE_GROUP, build_pipeline, create_environment

    def groups(settings: Settings) -> dict[str, str]:
        env = create_environment(settings, None)
        build_pipeline(env, settings)
        graph = env._generate_stream_graph(False)
        return {
            str(node.getOperatorName()): str(node.getSlotSharingGroup())
            for node in graph.getStreamNodes().toArray()
        }

    apart = services_settings.model_copy(
        update={"flink": services_settings.flink.model_copy(update={"separate_item_side": True})}
    )
    by_name = groups(apart)
    item_side = {name for name, group in by_name.items() if group == ITEM_SIDE_GROUP}
    assert {
        "item popularity + CF (item half)",
        "A/B attribution join",
        "propensity model (River)",
        "kafka: item factors: Writer",
        "parse + validate",
    } <= item_side, by_name
    user_side = {
        "user features + triggers + CF (user half)",
        "parse exposures -> rec id, impression",
    }
    assert not user_side & item_side, by_name
    assert all(by_name[name] == "default" for name in user_side), by_name
    # Off (the default): one group, as before.
    assert set(groups(services_settings).values()) == {"default"}
