"""Pseudonymous user identifiers (keyed hash) and the privacy audit record.

With ``privacy.hmac_secret`` set, user ids are replaced by
``p-<hex of HMAC-SHA256(secret, id)>`` before anything is stored: Flink state, Redis
features and model factors only ever see the pseudonym. The job applies it when it
parses an event, serving when it looks a user up, so both sides agree without sharing
anything but the secret. Raw ids remain only in the input topics, whose retention
bounds how long they live. Rotating the secret starts every user afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable

PSEUDONYM_PREFIX = "p-"


def pseudonymize(user_id: str, secret: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256)
    return PSEUDONYM_PREFIX + digest.hexdigest()[:32]


def pseudonymizer(secret: str) -> Callable[[str], str]:
    """``pseudonymize`` bound to ``secret``; the identity when no secret is configured."""
    if not secret:
        return lambda user_id: user_id
    return lambda user_id: pseudonymize(user_id, secret)


def audit_record(action: str, subject: str, *, actor: str, detail: str = "") -> str:
    """One JSON line for the privacy audit topic. ``subject`` is the stored (pseudonymous) id."""
    return json.dumps(
        {
            "audit_id": uuid.uuid4().hex,
            "action": action,
            "subject": subject,
            "actor": actor,
            "detail": detail,
            "time_ms": int(time.time() * 1000),
        },
        separators=(",", ":"),
        sort_keys=True,
    )
