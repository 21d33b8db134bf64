"""A Kafka consumer-group member that replaces itself when its membership stalls.

librdkafka can drop out of its consumer group for good. Seen in CI (2026-12-06,
librdkafka 2.16): the broker was down for 9 s, the client's 10 s group session ran out
just as the restarted broker's group coordinator loaded the group; both consumers of
the online-store writer revoked their partitions "to rejoin" and never sent a
JoinGroup again. They consumed nothing for the two minutes until the test gave up,
while their process looked healthy; the broker's log shows no join after the restart.

The group state librdkafka reports in its statistics tells it apart: a member that
takes part in its group is ``up`` and ``steady``. A member that has not been steady for
``stall_s`` (a join normally takes well under a second, a rebalance waiting for a dead
member at most its session timeout) is closed and a new one subscribes in its place.
Offsets are committed only by the user of this class, after its batch is applied
(auto-commit is off here, whatever the options say), so the new member resumes at the
last commit: the batch in flight may come again, as after any rebalance, and nothing is
lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import Counter

from personalization.settings import KafkaSettings

log = logging.getLogger(__name__)

REPLACEMENTS = Counter(
    "pz_kafka_consumer_replacements",
    "Kafka consumers replaced because their group membership stalled",
    ["consumer"],
)

# How often librdkafka reports its statistics (they carry the group state).
STATS_INTERVAL_MS = 1000
# A stalled member's close() may itself hang on its stuck group: it runs aside.
CLOSE_TIMEOUT_S = 5.0
STEADY = ("up", "steady")


class GroupHealth:
    """Whether a group member has been out of the ``up``/``steady`` state too long,
    from the group state in librdkafka's statistics (``cgrp.state``, ``cgrp.join_state``)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.state: tuple[str, str] | None = None
        self.unsteady_since: float | None = None

    def observe(self, stats: dict[str, Any], now: float) -> None:
        group = stats.get("cgrp")
        if not isinstance(group, dict):
            return  # not a group consumer, or no group state yet
        self.state = (str(group.get("state", "")), str(group.get("join_state", "")))
        if self.state == STEADY:
            self.unsteady_since = None
        elif self.unsteady_since is None:
            self.unsteady_since = now

    def stalled(self, now: float) -> bool:
        return (
            self.stall_s > 0
            and self.unsteady_since is not None
            and now - self.unsteady_since >= self.stall_s
        )


class GroupConsumer:
    """A ``confluent_kafka.Consumer`` in group ``group``, subscribed to ``topics``, that
    is replaced by a new member of the group when its membership stalls (see the module
    docstring). Brokers and stall time come from ``kafka``; ``options`` adds client
    settings (fetch wait, session timeout). It offers the calls the consuming loops
    make; ``replacements`` counts the replacements."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        topics: Sequence[str],
        *,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = {
            **(options or {}),
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
        }
        self._topics = list(topics)
        self.name = name
        self.replacements = 0
        self.health = GroupHealth(kafka.group_stall_s)
        self._consumer = self._subscribe()

    def _subscribe(self) -> Consumer:
        consumer = Consumer(self._config)
        consumer.subscribe(self._topics)
        return consumer

    def _on_stats(self, raw: str) -> None:
        try:
            self.health.observe(json.loads(raw), time.monotonic())
        except ValueError:
            log.debug("%s: unreadable consumer statistics", self.name)

    def _check(self) -> None:
        if self.health.stalled(time.monotonic()):
            self.replace()

    def replace(self) -> None:
        """Leave the group (aside, bounded) and join it again with a new consumer."""
        old, state, stall_s = self._consumer, self.health.state, self.health.stall_s
        log.warning(
            "%s: consumer group membership not steady for %.0fs (%s); replacing the consumer",
            self.name,
            stall_s,
            "/".join(state) if state else "no group state",
        )
        closer = threading.Thread(target=_close_quietly, args=(old,), daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning(
                "%s: the stalled consumer did not close in %.0fs", self.name, CLOSE_TIMEOUT_S
            )
        self.health = GroupHealth(stall_s)
        self._consumer = self._subscribe()
        self.replacements += 1
        REPLACEMENTS.labels(self.name).inc()

    # --- the calls the consuming loops make ---------------------------------------------

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self._check()
        return self._consumer.consume(num_messages=num_messages, timeout=timeout)

    def commit(self, offsets: list[TopicPartition] | None = None) -> None:
        """Commit ``offsets`` (default: those consumed so far), synchronously."""
        if offsets is None:
            self._consumer.commit(asynchronous=False)
        else:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def assignment(self) -> list[TopicPartition]:
        return self._consumer.assignment()

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return self._consumer.position(partitions)

    def get_watermark_offsets(
        self, partition: TopicPartition, *, cached: bool = False
    ) -> tuple[int, int]:
        return self._consumer.get_watermark_offsets(partition, cached=cached)

    def close(self) -> None:
        self._consumer.close()


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # the member is being dropped anyway
        log.debug("closing a stalled consumer failed: %s", exc)
