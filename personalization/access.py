"""API keys, their scopes, and the scope each gRPC method needs (pure: no gRPC).

The keys file (``serving.api_keys_file``, ``PZ_SERVING__API_KEYS_FILE``) is JSON and
holds hashes only, never a key::

    {"keys": [
      {"id": "web-shop", "hash": "sha256:9f86d0...", "scopes": ["recommend"],
       "created": "2025-01-31T12:00:00Z"}
    ]}

``personalize keys create|list|revoke`` edits it (``ops/cli.py``); the key itself is
shown once, at creation. Callers present a key as ``authorization: Bearer <key>`` or
``x-api-key: <key>`` metadata. Each presented credential is checked on its own and the
call is allowed when one of them is a known key holding the method's scope, so a client
may send its API key on every call and the legacy admin token on Admin calls.

Scopes (``SCOPES``) are independent: ``admin`` grants the Admin service only. The
legacy ``privacy.admin_token``, when set, counts as one more key with the ``admin``
scope (audited as ``admin-token``; keys as ``key:<id>``).

:data:`METHOD_SCOPES` names the scope of every method of our services; the health
service is open; server reflection is open unless ``serving.reflection_requires_key``
(then any valid key). A method the table does not list is refused to every key (so a new
RPC cannot ship unprotected; ``tests/unit/test_access.py`` checks the table against the
protos).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ADMIN",
    "ANY_KEY",
    "CATALOG",
    "COLLECT",
    "HEALTH_METHODS",
    "LEGACY_ADMIN_ID",
    "METHOD_SCOPES",
    "OPEN",
    "PROFILE_READ",
    "RECOMMEND",
    "REFLECTION_METHOD",
    "SCOPES",
    "TRIGGERS_READ",
    "AccessPolicy",
    "ApiKey",
    "Decision",
    "KeysFileError",
    "Outcome",
    "create_key",
    "dump_keys",
    "hash_key",
    "load_keys_file",
    "method_requirements",
    "new_key",
    "parse_keys",
    "parse_scopes",
    "presented_keys",
    "revoke_key",
    "update_keys_file",
    "write_keys_file",
]

COLLECT: Final = "collect"
RECOMMEND: Final = "recommend"
PROFILE_READ: Final = "profile:read"
ADMIN: Final = "admin"
# Write item metadata (Catalog.UpsertItems / DeleteItems): a shop's back office.
CATALOG: Final = "catalog"
# Subscribe to the dispatcher's trigger stream (dispatcher/subscribe.py).
TRIGGERS_READ: Final = "triggers:read"
SCOPES: Final = (COLLECT, RECOMMEND, PROFILE_READ, ADMIN, TRIGGERS_READ, CATALOG)

# Requirements that are not scopes (their spelling cannot be a scope's).
OPEN: Final = "(open)"  # no key needed
ANY_KEY: Final = "(any key)"  # a valid key, whatever its scopes

METHOD_SCOPES: Final[Mapping[str, str]] = {
    "/personalization.v1.Recommender/Recommend": RECOMMEND,
    "/personalization.v1.Recommender/GetUserProfile": PROFILE_READ,
    "/personalization.v1.Recommender/SimilarItems": RECOMMEND,
    "/personalization.v1.Catalog/UpsertItems": CATALOG,
    "/personalization.v1.Catalog/DeleteItems": CATALOG,
    "/personalization.v1.Collector/Collect": COLLECT,
    "/personalization.v1.Admin/ForgetUser": ADMIN,
    "/personalization.v1.Admin/SetConsent": ADMIN,
    "/personalization.v1.Admin/SetModelVersion": ADMIN,
    "/personalization.v1.Triggers/Subscribe": TRIGGERS_READ,
    "/personalization.v1.Triggers/ResolveUser": ADMIN,
}
# Load balancers and orchestrators probe health without credentials.
HEALTH_METHODS: Final = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
REFLECTION_METHOD: Final = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

HASH_PREFIX: Final = "sha256:"
LEGACY_ADMIN_ID: Final = "admin-token"
# Keys we issue are 43 URL-safe characters; anything longer is not one of ours and is
# refused before it is hashed or cached.
MAX_KEY_CHARS: Final = 256
# Distinct credentials looked at per call (each unknown one costs a hash).
MAX_CREDENTIALS: Final = 4

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
# Printable ASCII (what non-binary gRPC metadata can carry), no space at either end.
_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_ENTRY_FIELDS = frozenset({"id", "hash", "scopes", "created"})
_REQUIRED_FIELDS = ("id", "hash", "scopes")


def method_requirements(*, reflection_requires_key: bool = False) -> dict[str, str]:
    """What each known method needs: a scope, :data:`OPEN` or :data:`ANY_KEY`."""
    table = dict(METHOD_SCOPES)
    table.update(dict.fromkeys(HEALTH_METHODS, OPEN))
    table[REFLECTION_METHOD] = ANY_KEY if reflection_requires_key else OPEN
    return table


# --- keys and the keys file ------------------------------------------------------------


class KeysFileError(ValueError):
    """The keys file cannot be read or an entry is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the keys file: who (``id``), the key's SHA-256, what it may do."""

    id: str
    digest: bytes
    scopes: frozenset[str]
    created: str = ""
    # The legacy privacy.admin_token, not an entry of the file.
    legacy: bool = False

    @property
    def hash(self) -> str:
        return HASH_PREFIX + self.digest.hex()

    @property
    def actor(self) -> str:
        """How audit records name the caller."""
        return LEGACY_ADMIN_ID if self.legacy else f"key:{self.id}"

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "hash": self.hash, "scopes": sorted(self.scopes)}
        if self.created:
            entry["created"] = self.created
        return entry


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def hash_key(key: str) -> str:
    """The keys file's form of ``key``: ``sha256:<hex>``."""
    if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
        raise ValueError(f"an API key is 1..{MAX_KEY_CHARS} printable ASCII characters")
    return HASH_PREFIX + _digest(key).hex()


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe; never starting with "-", which a command
    line would take for an option)."""
    while True:
        key = secrets.token_urlsafe(32)
        if not key.startswith("-"):
            return key


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """``"collect,recommend"`` (or a list) as a set of known scopes; ValueError otherwise."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    scopes = [p.strip() for p in parts if p.strip()]
    if not scopes:
        raise ValueError(f"no scopes given (choose from {', '.join(SCOPES)})")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    return frozenset(scopes)


def _entry(raw: object, index: int) -> ApiKey:
    where = f"entry {index}"
    if not isinstance(raw, dict):
        raise KeysFileError(f"{where}: expected an object, got {type(raw).__name__}")
    key_id = raw.get("id")
    if isinstance(key_id, str):
        where = f"entry {index} (id {key_id!r})"
    missing = [name for name in _REQUIRED_FIELDS if name not in raw]
    if missing:
        raise KeysFileError(f"{where}: missing {', '.join(missing)}")
    extra = sorted(set(raw) - _ENTRY_FIELDS)
    if extra:
        raise KeysFileError(f"{where}: unknown field {extra[0]!r}")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise KeysFileError(f"{where}: id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    digest = raw["hash"]
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise KeysFileError(f"{where}: hash must be 'sha256:' and 64 lower-case hex digits")
    scopes = raw["scopes"]
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise KeysFileError(f"{where}: scopes must be a list of strings")
    try:
        parsed = parse_scopes(scopes)
    except ValueError as exc:
        raise KeysFileError(f"{where}: {exc}") from None
    created = raw.get("created", "")
    if not isinstance(created, str):
        raise KeysFileError(f"{where}: created must be a string")
    return ApiKey(key_id, bytes.fromhex(digest[len(HASH_PREFIX) :]), parsed, created)


def parse_keys(text: str) -> tuple[ApiKey, ...]:
    """Validate a keys file's text; :class:`KeysFileError` names the first bad entry."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise KeysFileError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"keys"}:
        raise KeysFileError('expected {"keys": [...]} at the top level')
    entries = document["keys"]
    if not isinstance(entries, list):
        raise KeysFileError('"keys" must be a list')
    keys = tuple(_entry(raw, index) for index, raw in enumerate(entries))
    seen_ids: set[str] = set()
    seen_hashes: dict[bytes, str] = {}
    for index, key in enumerate(keys):
        if key.id in seen_ids:
            raise KeysFileError(f"entry {index} (id {key.id!r}): id used twice")
        if key.digest in seen_hashes:
            raise KeysFileError(
                f"entry {index} (id {key.id!r}): same key as {seen_hashes[key.digest]!r}"
            )
        seen_ids.add(key.id)
        seen_hashes[key.digest] = key.id
    return keys


def load_keys_file(path: str | Path) -> tuple[ApiKey, ...]:
    """The keys of ``path``; :class:`KeysFileError` (naming the file) if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"api keys file {path}: {exc}") from None
    try:
        return parse_keys(text)
    except KeysFileError as exc:
        raise KeysFileError(f"api keys file {path}: {exc}") from None


def dump_keys(keys: Iterable[ApiKey]) -> str:
    return json.dumps({"keys": [key.to_json() for key in keys]}, indent=2) + "\n"


def write_keys_file(path: str | Path, keys: Iterable[ApiKey]) -> None:
    """Replace ``path`` atomically, so a server re-reading it never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dump_keys(keys)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_keys_file(
    path: str | Path, change: Callable[[tuple[ApiKey, ...]], tuple[ApiKey, ...]]
) -> tuple[ApiKey, ...]:
    """Read, ``change`` and write back the keys under a lock (two concurrent edits do not
    lose one another). A missing file is an empty one. Returns the keys written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = load_keys_file(target) if target.exists() else ()
        changed = change(keys)
        write_keys_file(target, changed)
        return changed


def create_key(
    keys: tuple[ApiKey, ...], key_id: str, scopes: Iterable[str] | str
) -> tuple[tuple[ApiKey, ...], str]:
    """``keys`` plus a new entry; returns them and the new key (its only appearance)."""
    if not _ID.fullmatch(key_id):
        raise ValueError("id must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with one")
    if any(key.id == key_id for key in keys):
        raise ValueError(f"id {key_id!r} exists (revoke it first to rotate)")
    key = new_key()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = ApiKey(key_id, _digest(key), parse_scopes(scopes), created)
    return (*keys, entry), key


def revoke_key(keys: tuple[ApiKey, ...], key_id: str) -> tuple[ApiKey, ...]:
    kept = tuple(key for key in keys if key.id != key_id)
    if len(kept) == len(keys):
        raise ValueError(f"no key with id {key_id!r}")
    return kept


# --- decisions -------------------------------------------------------------------------


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    key: ApiKey | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED


_OPEN = Decision(Outcome.ALLOWED, "open method")
_NO_KEY = Decision(
    Outcome.UNAUTHENTICATED,
    "an API key is required ('authorization: Bearer <key>' or 'x-api-key: <key>')",
)
_UNKNOWN_KEY = Decision(Outcome.UNAUTHENTICATED, "unknown API key")
_TOO_MANY = Decision(Outcome.UNAUTHENTICATED, f"more than {MAX_CREDENTIALS} credentials")


def _credential(name: str, value: object) -> tuple[str | None, str]:
    """(key, problem) of one metadata entry that should carry a credential."""
    if not isinstance(value, str):
        return None, f"{name} must be text"
    text = value.strip()
    if name == "authorization":
        scheme, _, text = text.partition(" ")
        if scheme.lower() != "bearer":
            return None, "authorization must be 'Bearer <key>'"
        text = text.strip()
    if not text:
        return None, f"{name} carries no key"
    if len(text) > MAX_KEY_CHARS or not _KEY.fullmatch(text):
        return None, f"{name} does not hold a well-formed API key"
    return text, ""


def presented_keys(metadata: Iterable[Any] | None) -> tuple[list[str], str]:
    """Distinct keys found in call metadata, and the first problem seen (or "").

    Tolerates anything: entries that are not (name, value) pairs, bytes values (``-bin``
    headers), repeated headers, huge or non-ASCII values (which are problems, not keys).
    """
    keys: list[str] = []
    problem = ""
    for item in metadata or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str):
            continue
        name = name.lower()
        if name not in ("authorization", "x-api-key"):
            continue
        key, issue = _credential(name, value)
        if key is None:
            problem = problem or issue
        elif key not in keys:
            keys.append(key)
            if len(keys) > MAX_CREDENTIALS:
                break
    return keys, problem


@dataclass(slots=True)
class _KeyState:
    keys: tuple[ApiKey, ...]
    # Verified presented key -> its entry, so a client's repeated calls do not rehash.
    # Looked up by the plain key in a dict (its timing depends on a keyed string hash,
    # not on how much of a secret matched); only hits are kept, so unknown keys cannot
    # grow it; it is dropped whenever the keys change, so a revoked key stops at once.
    verified: dict[str, ApiKey] = field(default_factory=dict)


class AccessPolicy:
    """The current keys and the method table; answers :meth:`decide` for each call.

    Safe to use from the event loop and from worker threads at once: the keys and their
    cache are swapped as one object by :meth:`replace_keys`.
    """

    def __init__(
        self,
        keys: Iterable[ApiKey] = (),
        *,
        admin_token: str = "",
        reflection_requires_key: bool = False,
        cache_size: int = 4096,
    ) -> None:
        self._legacy: tuple[ApiKey, ...] = ()
        if admin_token:
            # The digest of a token that is not a well-formed key is never matched.
            digest = hashlib.sha256(admin_token.encode("utf-8", "surrogatepass")).digest()
            self._legacy = (ApiKey(LEGACY_ADMIN_ID, digest, frozenset({ADMIN}), legacy=True),)
        self._requirements = method_requirements(reflection_requires_key=reflection_requires_key)
        self._cache_size = cache_size
        self._state = _KeyState((*self._legacy, *keys))

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """The keys of the file (without the legacy admin token)."""
        return self._state.keys[len(self._legacy) :]

    def replace_keys(self, keys: Iterable[ApiKey]) -> None:
        self._state = _KeyState((*self._legacy, *keys))

    def requirement(self, method: str) -> str | None:
        """A scope, :data:`OPEN`, :data:`ANY_KEY`, or None for a method not in the table."""
        return self._requirements.get(method)

    def verify(self, key: str) -> ApiKey | None:
        """The entry of a presented key, or None. Compares against every entry in
        constant time per entry (no early exit that would tell which one matched)."""
        state = self._state
        hit = state.verified.get(key)
        if hit is not None:
            return hit
        if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
            return None
        digest = _digest(key)
        found = None
        for entry in state.keys:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        if found is not None:
            if len(state.verified) >= self._cache_size:
                state.verified.clear()
            state.verified[key] = found
        return found

    def decide(self, metadata: Iterable[Any] | None, method: str) -> Decision:
        """May a call of ``method`` with this metadata go ahead?"""
        requirement = self._requirements.get(method)
        if requirement == OPEN:
            return _OPEN
        return self.authorize(metadata, requirement)

    def authorize(self, metadata: Iterable[Any] | None, requirement: str | None) -> Decision:
        """Decide for a requirement (a scope or :data:`ANY_KEY`; None = refused to all)."""
        if requirement == OPEN:
            return _OPEN
        presented, problem = presented_keys(metadata)
        if not presented:
            return Decision(Outcome.UNAUTHENTICATED, problem) if problem else _NO_KEY
        if len(presented) > MAX_CREDENTIALS:
            return _TOO_MANY
        matched = [entry for entry in map(self.verify, presented) if entry is not None]
        if not matched:
            return _UNKNOWN_KEY
        if requirement is None:
            return Decision(Outcome.PERMISSION_DENIED, "method not in the access table")
        for entry in matched:
            if requirement == ANY_KEY or requirement in entry.scopes:
                return Decision(Outcome.ALLOWED, f"key {entry.id!r}", entry)
        names = ", ".join(repr(entry.id) for entry in matched)
        return Decision(Outcome.PERMISSION_DENIED, f"key {names} lacks scope {requirement!r}")
