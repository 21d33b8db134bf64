"""A short digest of every failure, printed last, just above pytest's final count.

A fault test's failure message carries the logs of the job, the writer and the Flink
runtime: hundreds of lines. A CI that keeps only the head and the tail of the output
then shows the first failure's logs and none of the others, so a second failure (and
the Flink error behind the first) went unseen. The digest names each failure with the
line it failed on, the first line of its message and its notable log lines (errors,
exceptions and their causes), a few lines each.
"""

from __future__ import annotations

from typing import Any

import pytest

# Per failure: the message's first line and at most this many notable lines.
NOTABLE_LINES = 6
LINE_CHARS = 300
NOTABLE_MARKERS = (" ERROR ", "Exception", "Caused by", "Error:", "Traceback")


def digest_lines(report: pytest.TestReport) -> list[str]:
    """The digest of one failed report: header, first message line, notable lines."""
    crash = getattr(report.longrepr, "reprcrash", None)
    where = f"{crash.path}:{crash.lineno}" if crash is not None else report.location[0]
    lines = [f"{report.nodeid} ({report.when}) at {where}"]
    message = [
        line[1:].strip() for line in report.longreprtext.splitlines() if line.startswith("E ")
    ]
    message = [line for line in message if line]
    if message:
        lines.append(f"  {message[0][:LINE_CHARS]}")
    notable = [line for line in message[1:] if any(m in line for m in NOTABLE_MARKERS)]
    lines += [f"  | {line[:LINE_CHARS]}" for line in notable[-NOTABLE_LINES:]]
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    failed = [
        report
        for key in ("failed", "error")
        for report in terminalreporter.stats.get(key, [])
        if isinstance(report, pytest.TestReport)
    ]
    if not failed:
        return
    terminalreporter.section("failure digest")
    for report in failed:
        for line in digest_lines(report):
            terminalreporter.write_line(line)
