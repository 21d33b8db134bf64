"""The webhook signature: how a receiver knows a request came from us, unaltered, lately.

Every POST carries ``X-PZ-Timestamp: <unix seconds>`` and
``X-PZ-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``. The timestamp
is inside the signed text so a captured request cannot be replayed later with a fresh
header; the receiver refuses timestamps older than its tolerance (5 minutes in
:func:`verify`). Retries are signed again with their own timestamp.

>>> sign(b"s3cret", 1700000000, b'{"a":1}')
'sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940'
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = [
    "ATTEMPT_HEADER",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TRIGGER_HEADER",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "X-PZ-Signature"
TIMESTAMP_HEADER: Final = "X-PZ-Timestamp"
IDEMPOTENCY_HEADER: Final = "X-PZ-Idempotency-Key"
ATTEMPT_HEADER: Final = "X-PZ-Attempt"
TRIGGER_HEADER: Final = "X-PZ-Trigger"
_SCHEME: Final = "sha256="


def sign(secret: bytes, timestamp_s: int, body: bytes) -> str:
    """The ``X-PZ-Signature`` value of ``body`` sent at ``timestamp_s``."""
    signed = str(timestamp_s).encode("ascii") + b"." + body
    return _SCHEME + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    *,
    now_s: float,
    tolerance_s: float = 300.0,
) -> bool:
    """What a receiver does: the timestamp is recent and the signature matches (compared
    in constant time)."""
    try:
        timestamp_s = int(timestamp_header)
    except ValueError:
        return False
    if abs(now_s - timestamp_s) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp_s, body), signature_header.strip())
