"""Contract tests of the stream job's roles: every registered learner and trigger rule.

As River's ``river/checks`` run one set of checks over every estimator, these run over
the registries, ``flink_jobs.learner.LEARNERS`` and ``flink_jobs.triggers.KINDS`` (a
rule of every kind: the default rule file and a contract rule of each other shape): a
newly registered learner is checked without a line added here. The stream is
real: the first ratings of MovieLens 100k (``traffic.replay.dataset_path``).

Learners (see ``flink_jobs/learner.py``): ``learn_one`` leaves its inputs alone; unknown
and empty inputs get defined answers; ``rank`` follows ``predict_one``; a pickled
learner predicts and goes on learning exactly as the original; the same settings and
stream give the same output, also in another process.

Trigger rules (see ``flink_jobs/triggers.py``), each run alone inside the real per-user
state machine (``flink_jobs.profile``): each fires on the stream, only under its name,
at event times; the same events give the same triggers, also with the state pickled
between events as Flink keeps it; nothing fires on an empty state; a hook writes only
its own slot of ``rule_state`` and never its event or session; records round-trip
through ``personalization.triggers``; all rules together fire the union of each alone.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from flink_jobs import profile, triggers
from flink_jobs.covisitation import CoVisitation
from flink_jobs.learner import LEARNERS, Learner
from flink_jobs.sessions import Session
from flink_jobs.triggers import KINDS, TriggerRule, TriggerRules, TriggerState, load_rules
from personalization.events import ADD_TO_CART, PRODUCT_VIEW, Event
from personalization.settings import FeatureSettings, LearningSettings, TriggerSettings
from personalization.trigger_rules import ITEM_KINDS
from personalization.trigger_rules import KINDS as RULE_KINDS
from personalization.triggers import Trigger, parse_trigger
from traffic.replay import dataset_path, iter_events

# Enough for every rule to fire (the file starts with a few users' bursts of ratings).
RATINGS = 600
SETTINGS = LearningSettings(factors=8, seed=3)
FEATURES = FeatureSettings()
WEEK_MS = 7 * 24 * 3600 * 1000


@cache
def movielens() -> tuple[dict[str, Any], ...]:
    path = dataset_path("movielens-100k/u.data")
    return tuple(iter_events(path, limit=RATINGS, demographics=False))


# --- learners -------------------------------------------------------------------------

Interaction = tuple[str, str, float, int, dict[str, float]]
Factory = Callable[[LearningSettings], Learner]


@cache
def interactions() -> tuple[Interaction, ...]:
    """``(user, item, y, t, x)`` in file order: ``y`` 1.0 for 4-5 stars, else 0.0; ``x``
    what was known of the item and user before this rating (no label leaks in)."""
    out: list[Interaction] = []
    item_stars: dict[str, list[int]] = {}
    user_count: Counter[str] = Counter()
    for raw in movielens():
        user, item = raw["user_id"], raw["item_id"]
        stars = int(raw["properties"]["rating"])
        before = item_stars.setdefault(item, [])
        x = {
            "item_mean_stars": sum(before) / (5 * len(before)) if before else 0.5,
            "item_ratings": math.log1p(len(before)),
            "user_ratings": math.log1p(user_count[user]),
        }
        out.append((user, item, 1.0 if stars >= 4 else 0.0, raw["event_time"], x))
        before.append(stars)
        user_count[user] += 1
    return tuple(out)


def probes() -> tuple[list[str], list[str], dict[str, dict[str, float]]]:
    """Users and items to predict for (some known, one unknown each) and per-item x."""
    stream = interactions()
    users = [*list(dict.fromkeys(u for u, *_ in stream))[:5], "nobody"]
    items = [*list(dict.fromkeys(i for _, i, *_ in stream))[:25], "nothing"]
    x = {item: features for _, item, _, _, features in stream}  # the latest per item
    return users, items, x


def learn(learner: Learner, stream: Sequence[Interaction]) -> Learner:
    for user, item, y, t, x in stream:
        learner.learn_one(user, item, y, t, x)
    return learner


def outputs(learner: Learner) -> tuple[list[float], list[list[str]]]:
    users, items, x = probes()
    predictions = [learner.predict_one(u, i, x.get(i)) for u in users for i in items]
    return predictions, [learner.rank(u, items, x) for u in users]


def check_learn_one_keeps_inputs(make: Factory) -> None:
    learner = make(SETTINGS)
    for user, item, y, t, x in interactions():
        given = copy.deepcopy(x)
        learner.learn_one(user, item, y, t, x)
        assert x == given, f"learn_one changed x: {given} -> {x}"
    users, items, x = probes()
    given_items, given_x = list(items), copy.deepcopy(x)
    learner.rank(users[0], items, x)
    learner.predict_one(users[0], items[0], x[items[0]])
    assert items == given_items and x == given_x, "rank / predict_one changed their inputs"


def check_unknown_and_empty_inputs(make: Factory) -> None:
    fresh = make(SETTINGS)
    assert fresh.rank("nobody", []) == []
    assert fresh.rank("nobody", ["a", "b", "c"]) == ["a", "b", "c"]  # all tie: as given
    score = fresh.predict_one("nobody", "nothing")
    assert isinstance(score, float) and math.isfinite(score)
    trained = learn(make(SETTINGS), interactions())
    known_user, known_item = interactions()[0][:2]
    for user, item in (("nobody", known_item), (known_user, "nothing"), ("nobody", "nothing")):
        for x in (None, {}):
            score = trained.predict_one(user, item, x)
            assert isinstance(score, float) and math.isfinite(score), (user, item, x)
    assert trained.rank(known_user, []) == []
    assert sorted(trained.rank("nobody", ["b", known_item, "a"])) == sorted(["b", known_item, "a"])
    trained.learn_one("newcomer", "new-item", 1.0, interactions()[-1][3], {})  # no features


def check_rank_follows_predict_one(make: Factory) -> None:
    learner = learn(make(SETTINGS), interactions())
    users, items, x = probes()
    # Unknown items tie (no features, nothing learnt): they must keep their given order.
    unknown = ["zz-unknown-2", "aa-unknown-1", "mm-unknown-3"]
    candidates = items[:10] + unknown[:1] + items[10:] + unknown[1:] + items[:2]  # duplicates
    for user in users:
        ranked = learner.rank(user, candidates, x)
        assert Counter(ranked) == Counter(candidates), "rank must permute its items"
        scores = [learner.predict_one(user, item, x.get(item)) for item in ranked]
        for better, worse in itertools.pairwise(scores):
            # float32 matmul and a single dot product may differ in the last bits
            assert better >= worse - 1e-5 * (1.0 + abs(worse)), (user, scores)
        assert [i for i in ranked if i in unknown] == unknown, "ties must keep their order"


def check_pickle_round_trip(make: Factory) -> None:
    stream = interactions()
    half = len(stream) // 2
    learner = learn(make(SETTINGS), stream[:half])
    clone = pickle.loads(pickle.dumps(learner))
    assert type(clone) is type(learner)
    assert outputs(clone) == outputs(learner)
    learn(learner, stream[half:])
    learn(clone, stream[half:])
    assert outputs(clone) == outputs(learner), "an unpickled learner must learn identically"


def check_same_settings_same_output(make: Factory) -> None:
    a = learn(make(SETTINGS), interactions())
    b = learn(make(SETTINGS), interactions())
    assert outputs(a) == outputs(b)


LEARNER_CHECKS = [
    check_learn_one_keeps_inputs,
    check_unknown_and_empty_inputs,
    check_rank_follows_predict_one,
    check_pickle_round_trip,
    check_same_settings_same_output,
]


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_registered_learners_implement_the_role(name: str) -> None:
    assert isinstance(LEARNERS[name](SETTINGS), Learner)


@pytest.mark.parametrize("check", LEARNER_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_contract(name: str, check: Callable[[Factory], None]) -> None:
    check(LEARNERS[name])


def learner_outputs() -> dict[str, Any]:
    """Every learner's output on the stream, as JSON (run in another process below)."""
    return {name: outputs(learn(make(SETTINGS), interactions())) for name, make in LEARNERS.items()}


@pytest.fixture(scope="module")
def other_process_outputs() -> dict[str, Any]:
    # String hashing, hence set and dict-of-set order, differs per process: a restarted
    # or parallel subtask must still learn the same model from the same stream.
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "import test_job_contracts as c; print(json.dumps(c.learner_outputs()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learners_are_reproducible_across_processes(
    name: str, other_process_outputs: dict[str, Any]
) -> None:
    here = json.loads(json.dumps(outputs(learn(LEARNERS[name](SETTINGS), interactions()))))
    assert other_process_outputs[name] == here


class _MutatesFeatures:
    """A learner that consumes its ``x``: what the first check exists to catch."""

    def __init__(self, cfg: LearningSettings) -> None:
        self.inner = CoVisitation.from_settings(cfg)

    def learn_one(self, user: str, item: str, y: float, t: int = 0, x: Any = None) -> None:
        if x:
            x.pop(next(iter(x)))
        self.inner.learn_one(user, item, y, t)

    def predict_one(self, user: str, item: str, x: Any = None) -> float:
        return self.inner.predict_one(user, item)

    def rank(self, user: str, items: Sequence[str], x: Any = None) -> list[str]:
        return self.inner.rank(user, items)


def test_the_learner_checks_catch_a_learner_that_mutates_its_input() -> None:
    with pytest.raises(AssertionError, match="changed x"):
        check_learn_one_keeps_inputs(_MutatesFeatures)


# --- trigger rules --------------------------------------------------------------------


@cache
def events() -> tuple[Event, ...]:
    """The ratings as shop events in event-time order: 5 stars puts the movie in the
    cart (never bought: carts get abandoned), anything else is a product view."""
    out = [
        Event(
            event_id=raw["event_id"],
            user_id=raw["user_id"],
            event_type=ADD_TO_CART if raw["properties"]["rating"] == "5" else PRODUCT_VIEW,
            event_time_ms=raw["event_time"],
            item_id=raw["item_id"],
            category=raw["category"],
        )
        for raw in movielens()
    ]
    return tuple(sorted(out, key=lambda e: (e.event_time_ms, e.event_id)))


def _fields(state: TriggerState) -> dict[str, Any]:
    return {f.name: copy.deepcopy(getattr(state, f.name)) for f in dataclasses.fields(state)}  # type: ignore[arg-type]


# The default rule file plus one rule of every other shape, each tuned to fire on the
# stream (views and add-to-carts, never a purchase).
# (The user operator's kinds: price_drop rules run in the item operator, whose contract
# is tests/unit/test_price_drop.py; rules switched off in the file are left out.)
CONTRACT_RULES = [
    rule
    for rule in yaml.safe_load(FEATURES.triggers.rules_path.read_text())["rules"]
    if rule.get("enabled", True) and rule["kind"] not in ITEM_KINDS
] + [
    {
        "name": "view_then_cart",
        "kind": "sequence",
        "first": {"events": ["product_view"]},
        "then": {"events": ["add_to_cart"]},
        "within": "10m",
    },
    {
        "name": "cart_never_bought",
        "kind": "sequence",
        "first": {"events": ["add_to_cart"]},
        "then": {"events": ["purchase"]},
        "within": "5m",
        "negate": True,
        "cooldown": "1h",
    },
    {
        "name": "two_in_cart",
        "kind": "threshold",
        "feature": "cart_items",
        "milestones": [2, 5],
    },
    {
        "name": "bulk_add",
        "kind": "threshold",
        "events": ["add_to_cart"],
        "field": "quantity",
        "at_least": 1,
        "cooldown": "1d",
    },
    {"name": "went_quiet", "kind": "absence", "of": "activity", "within": "2h"},
]
CONTRACT_NAMES = sorted(rule["name"] for rule in CONTRACT_RULES)


def settings_with(*names: str) -> FeatureSettings:
    """Feature settings whose rule file holds just the named contract rules."""
    chosen = [rule for rule in CONTRACT_RULES if rule["name"] in names]
    text = yaml.safe_dump({"version": 1, "rules": chosen})
    return FeatureSettings(triggers=TriggerSettings(rules_yaml=text))


def checked(rule: type[TriggerRule]) -> type[TriggerRule]:
    """``rule`` with every hook call checked: its inputs stay as they were, it writes
    only its own slot of ``rule_state`` and nothing in itself (one rule object serves
    every user), its records carry its name, kind and user."""

    def call(
        self: TriggerRule, state: TriggerState, hook: Callable[[], list[Trigger]]
    ) -> list[Trigger]:
        before, own = _fields(state), copy.deepcopy(vars(self))
        fired = hook()
        after = _fields(state)
        wrote = {name for name in before if before[name] != after[name]}
        assert wrote <= rule.writes, f"{self.name} wrote {sorted(wrote - rule.writes)}"
        others = {k: v for k, v in before["rule_state"].items() if k in self.active}
        others.pop(self.name, None)
        kept = {k: v for k, v in after["rule_state"].items() if k != self.name}
        assert kept == others, f"{self.name} wrote another rule's slot"
        assert vars(self) == own, f"{self.name} keeps state in itself, not in the user's"
        for record in fired:
            assert isinstance(record, Trigger)
            assert (record.trigger, record.user_id) == (self.name, state.user_id), record
            assert record.kind == rule.kind, record
        return fired

    class Checked(rule):  # type: ignore[valid-type,misc]
        def on_event(self, state: TriggerState, event: Event) -> list[Trigger]:
            given = copy.deepcopy(event)
            fired = call(self, state, lambda: super(Checked, self).on_event(state, event))
            assert event == given, f"{self.name} changed the event"
            assert all(r.time_ms <= event.event_time_ms for r in fired), "fired in the future"
            return fired

        def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
            fired = call(self, state, lambda: super(Checked, self).on_time(state, now_ms))
            assert all(r.time_ms <= now_ms for r in fired), "fired after the time it was given"
            return fired

        def on_session_end(self, state: TriggerState, session: Session) -> list[Trigger]:
            given = dataclasses.replace(session)
            fired = call(self, state, lambda: super(Checked, self).on_session_end(state, session))
            assert session == given, f"{self.name} changed the session"
            return fired

    return Checked


def drive(
    stream: Sequence[Event], cfg: FeatureSettings = FEATURES, *, pickled: bool = False
) -> list[Trigger]:
    """The user operator's calls: each event through ``profile.apply_event`` (which
    first decides what was due), then the timers once event time is a week past the
    end. ``pickled``: the state goes through pickle between calls, as Flink keeps it."""
    states: dict[str, profile.UserState] = {}
    fired: list[Trigger] = []
    first = horizon = stream[0].event_time_ms
    for event in stream:
        state = states.get(event.user_id) or profile.new_state(event.user_id)
        outcome = profile.apply_event(state, event, cfg)
        states[event.user_id] = pickle.loads(pickle.dumps(state)) if pickled else state
        horizon = max(horizon, event.event_time_ms)
        fired.extend(outcome.triggers)
    end = horizon + WEEK_MS
    for state in states.values():
        fired.extend(profile.advance_time(state, end, cfg))
    # Event time, not the wall clock: nothing before the stream or after its timers.
    assert all(first <= record.time_ms <= end for record in fired), fired
    return fired


@pytest.fixture(params=CONTRACT_NAMES)
def only_rule(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FeatureSettings:
    """Settings whose rule file holds just this rule, its kind checked, so the job's
    calls run it alone."""
    monkeypatch.setattr(triggers, "KINDS", {k: checked(v) for k, v in KINDS.items()})
    return settings_with(request.param)


def test_every_kind_has_a_contract_rule() -> None:
    assert {rule["kind"] for rule in CONTRACT_RULES} == set(KINDS)
    assert set(KINDS) == set(RULE_KINDS) - set(ITEM_KINDS)


def test_the_rule_fires_on_the_stream_under_its_name(only_rule: FeatureSettings) -> None:
    (name,) = [rule.name for rule in TriggerRules(only_rule).rules]
    fired = drive(events(), only_rule)
    # The other checks mean little for a rule the stream never sets off.
    assert fired, f"{name} never fires on {RATINGS} MovieLens ratings: extend the stream"
    assert {record.trigger for record in fired} == {name}


def test_same_events_same_triggers(only_rule: FeatureSettings) -> None:
    first = [record.to_json() for record in drive(events(), only_rule)]
    assert [record.to_json() for record in drive(events(), only_rule)] == first
    assert [record.to_json() for record in drive(events(), only_rule, pickled=True)] == first


def test_records_round_trip_through_the_wire_format(only_rule: FeatureSettings) -> None:
    for record in drive(events(), only_rule):
        wire = record.to_json()
        assert parse_trigger(wire) == record
        assert parse_trigger(wire.encode()) == record
        parsed = parse_trigger(wire)
        assert parsed is not None and parsed.to_json() == wire


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_nothing_fires_on_an_empty_state(name: str) -> None:
    cfg = settings_with(name)
    (spec,) = load_rules(cfg.triggers)
    rule = checked(KINDS[spec.kind])(spec, cfg, frozenset({name}))
    state = profile.new_state("u1")
    t0 = events()[0].event_time_ms
    for now_ms in (0, t0, t0 + WEEK_MS, t0 + 52 * WEEK_MS):
        assert rule.on_time(state, now_ms) == []
    assert TriggerRules(cfg).on_time(profile.new_state("u1"), t0 + WEEK_MS) == []


def test_rules_are_independent() -> None:
    together = Counter(
        record.to_json() for record in drive(events(), settings_with(*CONTRACT_NAMES))
    )
    alone: Counter[str] = Counter()
    for name in CONTRACT_NAMES:
        alone.update(record.to_json() for record in drive(events(), settings_with(name)))
    assert together == alone


class _WritesOthersBookkeeping(TriggerRule):
    kind = "greedy"  # marks another rule's cart burst as handled

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        state.rule_state["cart_abandoned"] = [0, -1, True]
        return []


class _RemembersInItself(TriggerRule):
    kind = "forgetful"  # its memory would be shared by all users and lost on restore

    def on_time(self, state: TriggerState, now_ms: int) -> list[Trigger]:
        self.last_ms = now_ms
        return []


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        (_WritesOthersBookkeeping, "greedy wrote another"),
        (_RemembersInItself, "keeps state in itself"),
    ],
)
def test_the_rule_checks_catch_a_rule_that_breaks_them(
    bad: type[TriggerRule], complaint: str
) -> None:
    (spec,) = load_rules(settings_with("browse_intent").triggers)
    spec = dataclasses.replace(spec, name=bad.kind)
    rule = checked(bad)(spec, FEATURES, frozenset({bad.kind, "cart_abandoned"}))
    with pytest.raises(AssertionError, match=complaint):
        rule.on_time(profile.new_state("u1"), 0)


# --- the trigger record ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        "[]",
        "{}",
        '{"user_id": "u", "trigger": "quick_exit"}',  # no time
        '{"user_id": "u", "trigger": "quick_exit", "time": "5"}',
        '{"user_id": "u", "trigger": "quick_exit", "time": true}',
        '{"user_id": "", "trigger": "quick_exit", "time": 5}',
        '{"user_id": "u", "trigger": 7, "time": 5}',
        '{"user_id": "u", "trigger": "quick_exit", "time": 5, "evidence": [1]}',
    ],
)
def test_parse_trigger_refuses_what_is_not_a_trigger(raw: str) -> None:
    assert parse_trigger(raw) is None


def test_parse_trigger_defaults_missing_evidence() -> None:
    parsed = parse_trigger('{"user_id": "u", "trigger": "quick_exit", "time": 5}')
    assert parsed == Trigger("u", "quick_exit", 5, {})


def test_trigger_names_stay_importable_from_the_job() -> None:
    assert triggers.TRIGGER_NAMES == (
        triggers.BROWSE_INTENT,
        triggers.CART_ABANDONED,
        triggers.QUICK_EXIT,
    )
    assert triggers.Trigger is Trigger  # pickles naming the old module still load
