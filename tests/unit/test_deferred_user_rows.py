"""The user operator's coalesced rows: the step renders them later from the state, the
same rows a row per event would have ended with; erasures still go at once. And the
bridge that lets a keyed broadcast function's timer send them (pure, no Flink)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from feature_repo.names import USER_CF, USER_PROFILE
from flink_jobs import steps, timer_side_outputs
from personalization.events import CONSENT, ERASURE, Event
from personalization.settings import Settings

T0 = 1_700_000_000_000


def _step(defer: bool) -> steps.UserStep:
    settings = Settings()
    step = steps.UserStep(settings.features, settings.privacy, settings.learning)
    step.defer_rows = defer
    return step


def _events() -> list[Event]:
    kinds = ("product_view", "add_to_cart", "product_view", "purchase", "page_view")
    return [
        Event(
            f"e{n}",
            "u1",
            kind,
            T0 + n * 7_000,
            item_id="" if kind == "page_view" else f"i{n % 4}",
            category=f"c{n % 3}",
            price=10.0 + n,
            quantity=1,
        )
        for n, kind in enumerate(kinds * 3)
    ]


def _fold(step: steps.UserStep, events: list[Event]) -> tuple[Any, list[Any], bool]:
    user, rows, learned = None, [], False
    for event in events:
        result = step.on_event(user, event)
        if result.changed:
            user = result.state
        rows += result.rows
        learned = learned or result.learned
    return user, rows, learned


def test_deferred_rows_are_the_last_rows_a_row_per_event_would_write() -> None:
    per_event_user, per_event_rows, _ = _fold(_step(defer=False), _events())
    deferred = _step(defer=True)
    user, rows, learned = _fold(deferred, _events())
    assert rows == []  # nothing rendered per event
    assert learned
    rendered = deferred.rows(user, learned)
    last = {row.view: row for row in per_event_rows}  # the newest of each view
    assert [r.view for r in rendered] == [USER_PROFILE, USER_CF]
    assert rendered[0] == last[USER_PROFILE]
    # The factors as the last learnt event left them, versioned like the state now (a
    # later page view moved the version on): newer than the per-event row, never older.
    assert rendered[1].features == last[USER_CF].features
    assert rendered[1].version_us == user.version_us > last[USER_CF].version_us
    assert user.version_us == per_event_user.version_us


def test_factors_render_only_when_they_changed_or_when_not_known() -> None:
    step = _step(defer=True)
    user, _, _ = _fold(step, _events())
    assert [r.view for r in step.rows(user, learned=False)] == [USER_PROFILE]
    # A timer restored from a checkpoint does not know: the factors the state holds go.
    assert [r.view for r in step.rows(user, learned=None)] == [USER_PROFILE, USER_CF]


def test_erasures_are_not_deferred() -> None:
    step = _step(defer=True)
    user, _, _ = _fold(step, _events())
    withdrawn = step.on_event(
        user, Event("c1", "u1", CONSENT, T0 + 200_000, properties={"personalization": "denied"})
    )
    assert [(r.view, r.erase) for r in withdrawn.rows] == [(USER_PROFILE, True)]
    # The row that says "denied" is rendered later, newer than the erasure.
    later = step.rows(withdrawn.state, learned=None)
    assert later[0].features["consent"] == "denied"
    assert later[0].version_us > withdrawn.rows[0].version_us
    erased = step.on_event(withdrawn.state, Event("x1", "u1", ERASURE, T0 + 300_000))
    assert erased.state is None and [r.erase for r in erased.rows] == [True]


def test_impressions_defer_their_row_too() -> None:
    from flink_jobs.impressions import Impression

    step = _step(defer=True)
    user, _, _ = _fold(step, _events())
    shown = Impression("rec-1", "u1", ("i1", "i2"), ("c1", "c1"), T0 + 120_000)
    result = step.on_impression(user, shown)
    assert result.changed and result.rows == []


class _Context:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def collect(self, tag_id: str, value: Any) -> None:
        self.sent.append((tag_id, value))


# The shape of PyFlink's embedded runtime: process_func (a closure over the side-output
# context, in a pyflink file) iterates the function's process_element generator.
_RUNTIME = """
def make(side_output_context):
    def process_func(values):
        for value in values:
            if value is None:
                side_output_context.collect("", value)
            yield value
    return process_func
"""


def _runtime(context: Any) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(_RUNTIME, "/site-packages/pyflink/fn_execution/fake.py", "exec"), namespace)
    return namespace["make"](context)


def test_find_takes_the_runtime_context_from_a_process_element_generator() -> None:
    context = _Context()
    found: list[Any] = []

    def helper() -> None:  # the operator's _decide_rows
        found.append(timer_side_outputs.find())

    def process_element() -> Any:
        helper()
        yield "record"

    assert list(_runtime(context)(process_element())) == ["record"]
    assert found == [context]
    timer_side_outputs.TimerSideOutputs(context).collect(
        timer_side_outputs.OutputTag("user-rows"), "row"
    )
    assert context.sent and context.sent[0][1] == "row"


def test_find_is_none_outside_the_runtime() -> None:
    def process_element() -> Any:
        yield timer_side_outputs.find()

    assert list(process_element()) == [None]
    # A function named process_func elsewhere is not the runtime's.
    namespace: dict[str, Any] = {}
    exec(_RUNTIME, namespace)
    assert list(namespace["make"](_Context())(process_element())) == [None]


def test_the_installed_pyflink_still_has_the_shape_find_relies_on() -> None:
    """If this fails, PyFlink changed its embedded runtime: find() returns None there and
    the user operator falls back to a row per event (correct, slower): revisit."""
    # Read, not imported: the module imports the JVM bridge (pemja) at import.
    spec = importlib.util.find_spec("pyflink")
    assert spec is not None and spec.origin is not None
    runtime = Path(spec.origin).parent / "fn_execution/datastream/embedded/operations.py"
    source = runtime.read_text()
    assert "def process_func(values):" in source
    assert "side_output_context.collect(output_tag.tag_id, value[1])" in source
    assert "yield from process_func(process_element(value[1], read_only_broadcast_ctx))" in source
