"""What a receiver gets for one trigger: its idempotency key, the JSON body, the filter.

The idempotency key is derived from what the job derives the trigger from (the stored
user id, the rule, the event time it fired at), not from a Kafka offset or a clock, so a
redelivery after a crash, a retry, a replay of the same events and a Subscribe stream
all name the same trigger with the same key: receivers deduplicate on it.

>>> from personalization.triggers import Trigger
>>> idempotency_key(Trigger("p-1", "cart_abandoned", 1_000, {}))
'trg_024e2c3db3c6995bdd9eb3a972c6eb56'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from personalization.triggers import Trigger

__all__ = ["PSEUDONYM", "RAW", "Delivered", "body", "idempotency_key", "wanted"]

# How the body names the user (``user.kind``).
RAW: Final = "raw"
PSEUDONYM: Final = "pseudonym"


def idempotency_key(trigger: Trigger) -> str:
    """``trg_`` + 32 hex digits of SHA-256 over user, rule and time (unit separated)."""
    text = f"{trigger.user_id}\x1f{trigger.trigger}\x1f{trigger.time_ms}"
    return "trg_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def wanted(rules: Collection[str], rule: str) -> bool:
    """Whether a receiver that asked for ``rules`` (empty = all) gets ``rule``."""
    return not rules or rule in rules


@dataclass(frozen=True, slots=True)
class Delivered:
    """A trigger as delivered: the id the tenant may see, and the key."""

    trigger: Trigger
    user_id: str
    user_kind: str
    key: str
    partition: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.key,
            "rule": self.trigger.trigger,
            # count | absence | sequence | threshold; "" for records that do not say.
            "kind": self.trigger.kind,
            "user": {"id": self.user_id, "kind": self.user_kind},
            "time_ms": self.trigger.time_ms,
            "evidence": self.trigger.evidence,
            "position": {"partition": self.partition, "offset": self.offset},
        }


def body(delivered: Delivered) -> bytes:
    """The POST body: compact JSON with sorted keys, the same bytes on every attempt."""
    return json.dumps(delivered.to_dict(), separators=(",", ":"), sort_keys=True).encode()
