"""The floors of the code stay as docs/architecture.md draws them.

core (``feature_repo`` < ``personalization``) ← processes (``flink_jobs``, ``writer``,
``serving``, side by side, never importing each other) ← tooling (``ops``, ``traffic``,
``analysis``, ``dashboard``, ``bench``). A package imports only from its own floor's
lower rooms or from floors below; the processes and the writer see only the core.

Every ``import`` statement counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CORE = {"feature_repo", "personalization"}
PROCESSES = {"flink_jobs", "writer", "serving", "dispatcher"}
TOOLING = {"ops", "traffic", "analysis", "dashboard", "bench"}
PACKAGES = CORE | PROCESSES | TOOLING

# What each package may import from the project (besides itself).
ALLOWED: dict[str, set[str]] = {
    "feature_repo": set(),
    "personalization": {"feature_repo"},
    "flink_jobs": CORE,
    "writer": CORE,
    "serving": CORE,
    "dispatcher": CORE,
    # Traffic and analysis are tooling that the others use; they stand on the core and,
    # for analysis, on the per-record logic of the processes it replays offline.
    "traffic": CORE,
    "analysis": CORE | PROCESSES | {"traffic"},
    "dashboard": CORE,
    "ops": CORE | PROCESSES | {"traffic", "analysis", "dashboard"},
    "bench": CORE | PROCESSES | {"traffic", "analysis", "ops"},
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.append((node.lineno, top))
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for line, target in imported_packages(path):
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return bad


def test_every_package_has_a_floor() -> None:
    on_disk = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "tests"
    }
    assert on_disk == PACKAGES, f"packages without a floor: {on_disk ^ PACKAGES}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_point_down(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # Regression guard for the check itself: a lazy, upward import inside a function
    # (how serving used to reach into the job) must be reported.
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "x.py").write_text(
        "def f():\n    from flink_jobs.content import jaccard_rows\n    return jaccard_rows\n"
    )
    assert violations("serving", tmp_path) == ["serving/x.py:2 imports flink_jobs"]
