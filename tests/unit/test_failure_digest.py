"""The failure digest printed at the end of a test run (tests/failure_digest.py)."""

from __future__ import annotations

import pytest

from tests.failure_digest import NOTABLE_LINES, digest_lines


def failed(longrepr: str) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid="tests/faults/test_x.py::test_y",
        location=("tests/faults/test_x.py", 10, "test_y"),
        keywords={},
        outcome="failed",
        longrepr=longrepr,
        when="call",
    )


def test_names_the_test_the_first_message_line_and_its_errors() -> None:
    text = "\n".join(
        [
            ">   assert drained",
            "E   AssertionError: run d-: 10 entities still behind after 120s",
            "E   --- flink-job ---",
            "E   2026-12-06 11:14:05,213 INFO restoring from checkpoint chk-97",
            "E   2026-12-06 11:17:40,001 ERROR org.apache.flink.Task - sink failed",
            "E   Caused by: org.apache.kafka.common.errors.TimeoutException: expired",
        ]
    )
    lines = digest_lines(failed(text))
    assert lines[0] == "tests/faults/test_x.py::test_y (call) at tests/faults/test_x.py"
    assert lines[1] == "  AssertionError: run d-: 10 entities still behind after 120s"
    assert lines[2:] == [
        "  | 2026-12-06 11:17:40,001 ERROR org.apache.flink.Task - sink failed",
        "  | Caused by: org.apache.kafka.common.errors.TimeoutException: expired",
    ]


def test_keeps_only_the_last_notable_lines_each_cut_short() -> None:
    errors = [f"E   11:17:40 ERROR {i} " + "x" * 1000 for i in range(NOTABLE_LINES + 5)]
    lines = digest_lines(failed("\n".join(["E   AssertionError: boom", *errors])))
    assert len(lines) == 2 + NOTABLE_LINES
    assert lines[2].startswith("  | 11:17:40 ERROR 5 ")
    assert all(len(line) <= 305 for line in lines)
