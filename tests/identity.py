"""Test stacks store user ids as HMAC pseudonyms, as production with a secret does.

The session's settings carry ``privacy.hmac_secret``, so the job keys state, features,
triggers and model factors by ``pseudonymize(user_id, secret)``; tests that read the
store or the job's output directly translate the ids they sent with :func:`stored_id`
(serving's RPCs take raw ids and translate them themselves).
"""

from __future__ import annotations

from personalization.privacy import pseudonymizer
from personalization.settings import Settings

TEST_HMAC_SECRET = "test-hmac-secret"


def stored_id(settings: Settings, user_id: str) -> str:
    return pseudonymizer(settings.privacy.hmac_secret)(user_id)
