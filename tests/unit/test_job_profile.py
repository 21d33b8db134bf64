"""bench/ingest/job_profile.py: py-spy's raw stacks summed into shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ingest.job_profile import summarize

OP = "OneInputFunctionOperation.process_element (pyflink/fn_execution/embedded/operations.py:92)"
USER = "UserFeatures.process_element (flink_jobs/operators.py:284)"
EMIT = (
    "SideOutputContext.collect (pyflink/fn_execution/datastream/embedded/side_output_context.py:34)"
)
UPDATE = "ValueStateImpl.update (pyflink/fn_execution/datastream/embedded/state_impl.py:68)"
PICKLE = "PickleDataConverter.to_external (pyflink/fn_execution/embedded/converters.py:72)"
STEP = "UserStep.on_event (flink_jobs/steps.py:277)"


def test_shares_of_the_samples_with_a_python_stack(tmp_path: Path):
    raw = tmp_path / "spy.raw"
    raw.write_text(
        "\n".join(
            [
                f"{OP};{USER};{STEP} 50",
                f"{OP};{USER};{UPDATE};{PICKLE} 20",  # the pickling inside an update is its
                f"{OP};{EMIT} 30",
                " 40",  # a JVM thread with no Python frame: counted apart
                "",
            ]
        )
    )
    s = summarize(raw)
    assert s["samples"] == 100 and s["samples_without_python_frames"] == 40
    assert s["flink_calls_pct"] == {"emit to a side output": 30.0, "keyed state: update": 20.0}
    assert s["flink_calls_total_pct"] == pytest.approx(50.0)
    inclusive = dict(s["inclusive_pct"])
    assert inclusive["UserFeatures.process_element (operators.py)"] == 70.0
    assert inclusive["OneInputFunctionOperation.process_element (operations.py)"] == 100.0
    assert dict(s["self_pct"])["UserStep.on_event (steps.py)"] == 50.0


def test_no_python_stacks_say_so(tmp_path: Path):
    raw = tmp_path / "spy.raw"
    raw.write_text(" 12\n")
    assert summarize(raw) == {"samples": 0, "samples_without_python_frames": 12}
