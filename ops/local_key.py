"""The local stack's API key: ``personalize up`` turns access control on by itself.

With ``serving.api_keys_file`` unset, ``up`` serves with ``<run_dir>/api_keys.json`` and
makes sure it holds a key ``local`` with every scope whose plain value is in
``<run_dir>/api_key`` (mode 0600): created (and printed once) when either is missing or
they no longer match (revoked, file replaced). ``personalize recommend|profile`` and
``up``'s own sample recommendations present ``$PERSONALIZE_API_KEY`` if set, else that
file, so the commands of the README work without any set-up. A configured
``serving.api_keys_file`` is the operator's: ``up`` uses it as it is and creates nothing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from personalization.access import (
    SCOPES,
    AccessPolicy,
    ApiKey,
    create_key,
    load_keys_file,
    revoke_key,
    update_keys_file,
)
from personalization.settings import Settings

__all__ = [
    "API_KEY_ENV",
    "LOCAL_KEY_ID",
    "LocalAccess",
    "default_api_key",
    "ensure_local_access",
    "key_file",
    "keys_file",
]

# The key the CLI's own gRPC calls present to a server with access control on.
API_KEY_ENV = "PERSONALIZE_API_KEY"
LOCAL_KEY_ID = "local"


def keys_file(settings: Settings) -> Path:
    return settings.run_path / "api_keys.json"


def key_file(settings: Settings) -> Path:
    """Where ``up`` leaves the local key for the CLI (readable by its owner only)."""
    return settings.run_path / "api_key"


def default_api_key(settings: Settings) -> str:
    """``$PERSONALIZE_API_KEY``, else the local key ``up`` wrote, else ""."""
    from_env = os.environ.get(API_KEY_ENV, "")
    if from_env:
        return from_env
    try:
        return key_file(settings).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class LocalAccess:
    settings: Settings  # serving.api_keys_file set to ``keys_file``
    keys_file: Path
    key_file: Path
    key: str
    created: bool  # a new key was made (and must be shown)


def _write_secret(path: Path, text: str) -> None:
    """Replace ``path`` atomically with mode 0600 from the start (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid(keys: tuple[ApiKey, ...], key: str) -> bool:
    """The key is known and holds every scope (a scope added since it was made, such as
    ``catalog``, makes ``up`` replace it)."""
    found = AccessPolicy(keys).verify(key) if key else None
    return found is not None and set(SCOPES) <= set(found.scopes)


def ensure_local_access(settings: Settings) -> LocalAccess | None:
    """Settings that serve with the local keys file, and the key to use; None when
    ``serving.api_keys_file`` is configured (the operator's keys, left alone)."""
    if settings.serving.api_keys_file:
        return None
    path, secret = keys_file(settings), key_file(settings)
    try:
        current = secret.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        current = ""
    made: list[str] = []

    def ensure(keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        if _valid(keys, current):
            return keys
        if any(k.id == LOCAL_KEY_ID for k in keys):
            keys = revoke_key(keys, LOCAL_KEY_ID)  # its plain value is lost: replace it
        keys, key = create_key(keys, LOCAL_KEY_ID, SCOPES)
        made.append(key)
        return keys

    if path.exists() and _valid(load_keys_file(path), current):
        key = current  # nothing to write: the server may be reading the file right now
    else:
        update_keys_file(path, ensure)
        key = made[0] if made else current
        if made:
            _write_secret(secret, key)
    serving = settings.serving.model_copy(update={"api_keys_file": str(path)})
    return LocalAccess(
        settings.model_copy(update={"serving": serving}), path, secret, key, bool(made)
    )
