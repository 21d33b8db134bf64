"""Which user id a trigger carries to the tenant, and the directory that can resolve it.

The job stores users under their pseudonym (``personalization/privacy.py``: an HMAC, one
way), so the ``triggers`` topic names pseudonyms. Turning one back into the id the tenant
knows needs a record of both, which nothing keeps by default. With
``dispatcher.identity_directory`` on, :func:`run_identity_directory` keeps one: it reads
the event topics (the only place raw ids live) and sets
``<project>:identity:<pseudonym>`` = raw id in Redis, expiring after
``privacy.retention_days`` like the user's features, deleted when the user withdraws
consent or is erased (the ``consent`` / ``erasure`` events serving's Admin sends).

A trigger then carries (:class:`IdentityResolver`):

- without ``privacy.hmac_secret``: the id as stored, which is the raw id (``raw``);
- with ``dispatcher.raw_user_ids`` and a user whose stored consent (``consent`` of the
  ``user_profile`` row the job writes) is ``granted`` and who is in the directory: the
  raw id (``raw``);
- otherwise the pseudonym (``pseudonym``); a holder of an ``admin`` key resolves it with
  ``Triggers.ResolveUser`` (audited, ``dispatcher/subscribe.py``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException

from dispatcher.envelope import PSEUDONYM, RAW
from dispatcher.metrics import dispatcher_metrics
from feature_repo.names import USER_PROFILE
from personalization.events import CONSENT, CONSENT_PROPERTY, ERASURE
from personalization.feature_store import decode_fields, field_key, redis_key
from personalization.group_consumer import GroupConsumer
from personalization.privacy import pseudonymizer
from personalization.redis_client import REDIS_ERRORS, redis_client
from personalization.settings import Settings

__all__ = ["IdentityResolver", "directory_changes", "directory_key", "run_identity_directory"]

log = logging.getLogger(__name__)

GRANTED = "granted"


def directory_key(project: str, pseudonym: str) -> str:
    return f"{project}:identity:{pseudonym}"


def directory_changes(
    raw_values: Sequence[bytes], pseudonymize: Callable[[str], str]
) -> tuple[dict[str, str], set[str]]:
    """(pseudonym -> raw id to set, pseudonyms to delete) of a batch of event records, in
    order: the last word about a user wins. Records that are not JSON objects with a
    string ``user_id`` are skipped (the job dead-letters them)."""
    sets: dict[str, str] = {}
    deletes: set[str] = set()
    for raw in raw_values:
        try:
            event = json.loads(raw)
            user_id = event["user_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(user_id, str) or not user_id:
            continue
        stored = pseudonymize(user_id)
        event_type = event.get("event_type")
        properties = event.get("properties")
        denied = (
            event_type == CONSENT
            and isinstance(properties, dict)
            and properties.get(CONSENT_PROPERTY) == "denied"
        )
        if event_type == ERASURE or denied:
            sets.pop(stored, None)
            deletes.add(stored)
        else:
            deletes.discard(stored)
            sets[stored] = user_id
    return sets, deletes


class IdentityResolver:
    """The (id, kind) each trigger carries; one Redis round trip per batch when raw ids
    are on, none otherwise."""

    def __init__(self, settings: Settings) -> None:
        self._pseudonymised = bool(settings.privacy.hmac_secret)
        self._raw_ids = settings.dispatcher.raw_user_ids and self._pseudonymised
        self._directory = settings.dispatcher.identity_directory
        self._project = settings.feast.project
        self._consent_field = field_key(USER_PROFILE, "consent")
        self._redis = (
            redis_client(settings.redis, request_path=False, timeout_s=2.0)
            if self._directory
            else None
        )

    def resolve_many(self, stored_ids: Sequence[str]) -> list[tuple[str, str]]:
        if not self._pseudonymised:
            return [(user_id, RAW) for user_id in stored_ids]
        if not self._raw_ids or self._redis is None or not stored_ids:
            return [(user_id, PSEUDONYM) for user_id in stored_ids]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user_id in stored_ids:
                pipe.get(directory_key(self._project, user_id))
                # execute_command: redis-py's typed hmget() rejects Feast's bytes keys.
                profile = redis_key(self._project, USER_PROFILE, user_id)
                pipe.execute_command("HMGET", profile, self._consent_field)
            replies = pipe.execute()
        except REDIS_ERRORS as exc:
            # The pseudonym is always safe to hand out; a raw id never is without consent.
            log.warning("identity directory unreadable (%s): delivering pseudonyms", exc)
            dispatcher_metrics().identity_fallbacks.inc(len(stored_ids))
            return [(user_id, PSEUDONYM) for user_id in stored_ids]
        out = []
        for i, user_id in enumerate(stored_ids):
            raw, consent_raw = replies[2 * i], replies[2 * i + 1]
            consent = decode_fields(USER_PROFILE, ["consent"], consent_raw).get("consent")
            if raw and consent == GRANTED:
                out.append((raw.decode("utf-8"), RAW))
            else:
                out.append((user_id, PSEUDONYM))
        return out

    def lookup(self, pseudonym: str) -> str | None:
        """The raw id behind ``pseudonym``, if the directory has it (ResolveUser)."""
        if self._redis is None:
            return None
        raw: bytes | None = self._redis.get(directory_key(self._project, pseudonym))  # type: ignore[assignment]
        return raw.decode("utf-8") if raw else None


def run_identity_directory(settings: Settings, stop: threading.Event) -> None:
    """Keep the directory from the event topics until ``stop``; offsets are committed
    after Redis took the batch (a batch applied twice sets the same values)."""
    pseudonymize = pseudonymizer(settings.privacy.hmac_secret)
    client = redis_client(settings.redis, request_path=False, timeout_s=5.0)
    ttl_s = settings.privacy.retention_days * 24 * 3600 or None
    project = settings.feast.project
    consumer = GroupConsumer(
        settings.kafka,
        settings.dispatcher.identity_consumer_group,
        settings.kafka.event_topics,
        name="identity directory",
        options={"fetch.wait.max.ms": 50},
    )
    backoff_s = 0.1
    try:
        while not stop.is_set():
            messages = consumer.consume(num_messages=1000, timeout=0.2)
            values = [m.value() or b"" for m in messages if m.error() is None]
            for m in messages:
                error = m.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka error: %s", error)
            if not messages:
                continue
            sets, deletes = directory_changes(values, pseudonymize)
            while not stop.is_set():
                try:
                    pipe = client.pipeline(transaction=False)
                    for stored, raw in sets.items():
                        pipe.set(directory_key(project, stored), raw, ex=ttl_s)
                    for stored in deletes:
                        pipe.delete(directory_key(project, stored))
                    pipe.execute()
                    backoff_s = 0.1
                    break
                except REDIS_ERRORS as exc:
                    log.warning("identity directory write failed (%s); retrying", exc)
                    stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, 2.0)
            else:
                break
            try:
                consumer.commit()
            except KafkaException as exc:
                log.warning("identity offsets not committed (%s): the batch is reapplied", exc)
    finally:
        consumer.close()
