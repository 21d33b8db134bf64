"""The throughput benches run the job at the priority of everything else; the whole-stack
bench keeps the stack's (its point is serving beside a lower-priority job)."""

from __future__ import annotations

from bench.__main__ import build_parser
from bench.env import THROUGHPUT_SCENARIOS, equal_priority
from personalization.settings import PrioritySettings, Settings


def test_equal_priority_puts_every_component_at_nice_0():
    settings = Settings(priority=PrioritySettings(job=10, writer=5, dispatcher=5, serving=3))
    equal = equal_priority(settings).priority
    assert equal.model_dump() == {name: 0 for name in PrioritySettings.model_fields}
    assert settings.priority.job == 10  # the original is not changed


def test_which_benches_level_the_priorities():
    assert {"ingest", "freshness"} <= set(THROUGHPUT_SCENARIOS)
    assert "stack" not in THROUGHPUT_SCENARIOS
    parser = build_parser()
    assert not parser.parse_args(["ingest"]).stack_priority
    assert parser.parse_args(["ingest", "--stack-priority"]).stack_priority
