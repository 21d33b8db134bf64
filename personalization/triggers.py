"""The trigger record: the wire format of the ``triggers`` topic.

The job's trigger rules (``flink_jobs/triggers.py``) emit one record each time a rule
fires for a user; whatever consumes the topic (CRM, notifications, the fault tests)
reads it back with :func:`parse_trigger`. ``time`` is the event time the rule fired at,
so a replay of the same events writes the same records. ``trigger`` names the rule (its
``name`` in the rule file), ``kind`` its kind (count, absence, sequence, threshold;
absent in records of jobs before rule files), ``evidence`` what made it fire: the event
ids, items and counts the rule saw.

Examples
--------
>>> record = Trigger("u1", "browse_intent", 1_000, {"views": 3})
>>> record.to_json()
'{"evidence":{"views":3},"time":1000,"trigger":"browse_intent","user_id":"u1"}'
>>> parse_trigger(record.to_json()) == record
True
>>> parse_trigger('{"user_id": "u1"}') is None
True
>>> Trigger("u1", "browse_intent", 1_000, {}, kind="count").to_json()
'{"evidence":{},"kind":"count","time":1000,"trigger":"browse_intent","user_id":"u1"}'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Trigger", "parse_trigger"]


@dataclass(frozen=True, slots=True)
class Trigger:
    user_id: str
    trigger: str  # the rule's name
    time_ms: int
    # JSON-native values only (str, numbers, lists, dicts), so a record parses back equal.
    evidence: dict[str, Any] = field(default_factory=dict)
    # The rule's kind; "" (and left out of the JSON) for records that do not say.
    kind: str = ""

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "user_id": self.user_id,
            "trigger": self.trigger,
            "time": self.time_ms,
            "evidence": self.evidence,
        }
        if self.kind:
            record["kind"] = self.kind
        return json.dumps(record, separators=(",", ":"), sort_keys=True)


def parse_trigger(raw: str | bytes) -> Trigger | None:
    """A trigger record, or None when it is not one (the caller logs and counts it)."""
    try:
        data = json.loads(raw)
        user_id, name, time_ms = data["user_id"], data["trigger"], data["time"]
        evidence = data.get("evidence", {})
        kind = data.get("kind", "")
    except (ValueError, KeyError, TypeError):
        return None
    # Checked rather than coerced: a record that only looks like a trigger after str()
    # or int() is a producer bug, not something to act on.
    if not (isinstance(user_id, str) and user_id and isinstance(name, str) and name):
        return None
    if not isinstance(time_ms, int) or isinstance(time_ms, bool):
        return None
    if not isinstance(evidence, dict) or not isinstance(kind, str):
        return None
    return Trigger(user_id, name, time_ms, evidence, kind)
