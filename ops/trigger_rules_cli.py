"""``personalize triggers check [FILE]``: validate a trigger rule file before a job
reads it, and show what each rule does (the job refuses a wrong file at start; this
says the same without starting anything)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from personalization.settings import Settings
from personalization.trigger_rules import Rule, RuleFileError, load_rule_file

__all__ = ["add_commands", "describe"]


def describe(rule: Rule) -> str:
    """One line: name, kind and the definition's fields that are set."""
    shown = _plain(rule, skip=("name", "kind", "fingerprint"))
    return f"{rule.name:24} {rule.kind:10} {shown[1:-1]}"


def _set(value: Any) -> bool:
    return value is not None and value != "" and value != () and value != frozenset()


def _plain(value: Any, skip: tuple[str, ...] = ()) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [
            f"{f.name}={_plain(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if f.name not in skip and _set(getattr(value, f.name))
        ]
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, frozenset | set):
        return "[" + ",".join(sorted(value)) + "]"
    return str(value)


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    path = args.file or settings.features.triggers.rules_path
    try:
        rules = load_rule_file(path)
    except RuleFileError as exc:
        print(exc)
        return 1
    print(f"{path}: {len(rules)} rule(s) in force")
    for rule in rules:
        print(describe(rule))
    return 0


def add_commands(sub: Any) -> None:
    triggers = sub.add_parser("triggers", help="trigger rules: check a rule file")
    actions = triggers.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a rule file and list its rules")
    check.add_argument("file", nargs="?", default="", help="default: features.triggers.rules_file")
    check.set_defaults(func=cmd_check)
