"""The privacy audit trail as serving writes it: one acknowledged record per action.

``Admin`` (forget, consent, model version) and ``Recommender.GetUserProfile`` write a
record (``personalization.privacy.audit_record``: action, subject = the stored
pseudonym, actor = ``key:<id>`` / ``admin-token`` / ``anonymous``, time) to
``kafka.audit_topic`` and wait for the broker's acknowledgement before they act or
answer: what is not in the trail does not happen. :meth:`AuditLog.write` raises
:class:`AuditUnavailable` when the record is not acknowledged within
``serving.collect_ack_timeout_s``; callers answer UNAVAILABLE. It blocks, so callers run
in the server's thread pool, never on the event loop (``serving/async_handlers.py``).
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from personalization.settings import Settings

__all__ = ["AuditLog", "AuditUnavailable"]


class AuditUnavailable(RuntimeError):
    """The audit record was not acknowledged (Kafka down, slow or refusing it)."""


class AuditLog:
    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka.audit_topic
        self._timeout_s = settings.serving.collect_ack_timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                "client.id": "pz-serving-audit",
            }
        )

    def write(self, record: str) -> None:
        """Append ``record`` and wait for its acknowledgement, or raise AuditUnavailable."""
        done = threading.Event()
        failure: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failure.append(err)
            done.set()

        try:
            self._producer.produce(self._topic, value=record.encode(), on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise AuditUnavailable(f"audit record not accepted: {exc}") from exc
        deadline = time.monotonic() + self._timeout_s
        # Any thread's poll serves every pending delivery callback, so concurrent writers
        # each wait for their own record's event.
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuditUnavailable(f"audit record not acknowledged within {self._timeout_s:g}s")
            self._producer.poll(min(remaining, 0.05))
        if failure:
            raise AuditUnavailable(f"audit record refused: {failure[0]}")

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)
