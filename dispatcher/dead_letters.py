"""The ``triggers_dlq`` record: a trigger that could not be delivered, and why.

One record per (trigger, endpoint) that failed, so a trigger that reached one endpoint
and not another is re-driven to the one that missed it only. ``trigger`` is the record as
it was on the ``triggers`` topic (pseudonymous, like the topic), ``raw`` instead when the
record was not a trigger at all (reason ``invalid_trigger``, no endpoint).

Reasons: ``webhook_failed`` (retryable failures until ``max_attempts``),
``webhook_rejected`` (a status that is not retried, e.g. 400), ``invalid_trigger``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from dispatcher.webhooks import AttemptResult, Outcome, retryable

__all__ = ["INVALID_TRIGGER", "WEBHOOK_FAILED", "WEBHOOK_REJECTED", "invalid_record", "record"]

WEBHOOK_FAILED: Final = "webhook_failed"
WEBHOOK_REJECTED: Final = "webhook_rejected"
INVALID_TRIGGER: Final = "invalid_trigger"


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def record(
    raw: bytes,
    *,
    endpoint: str,
    url: str,
    idempotency_key: str,
    outcome: Outcome,
    source: dict[str, Any],
    now_ms: int,
) -> bytes:
    """The dead letter of a trigger one endpoint did not take."""
    last = AttemptResult(outcome.last_status, outcome.last_error)
    reason = WEBHOOK_FAILED if retryable(last) else WEBHOOK_REJECTED
    return _dumps(
        {
            "reason": reason,
            "endpoint": endpoint,
            "url": url,
            "attempts": outcome.attempts,
            "last_status": outcome.last_status,
            "last_error": outcome.last_error,
            "idempotency_key": idempotency_key,
            "trigger": json.loads(raw),
            "source": source,
            "failed_at_ms": now_ms,
        }
    )


def invalid_record(raw: bytes, *, source: dict[str, Any], now_ms: int) -> bytes:
    """The dead letter of a record of the triggers topic that is not a trigger."""
    return _dumps(
        {
            "reason": INVALID_TRIGGER,
            "raw": raw.decode("utf-8", "replace"),
            "source": source,
            "failed_at_ms": now_ms,
        }
    )
