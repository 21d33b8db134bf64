"""Send events to the Kafka input topics at a target rate.

:class:`TrafficSender` produces each event to the topic of its family
(:func:`personalization.events.topic_family` → ``settings.kafka.clickstream_topic`` /
``purchase_topic`` / ``engagement_topic``), keyed by ``user_id``, as compact JSON.

* ``rate``: events per second through a token bucket (:func:`take_token`, a pure
  function); ``0`` = as fast as possible. Once the bucket is empty the sender sleeps
  ``pace_slice_s`` (5 ms) at a time, as far as the burst can bank it
  (:func:`pause_for`), and then sends what came due at once: one sleep per token at
  2,000 events/s was 2,000 wake-ups a second, and the sender's CPU (Python and
  librdkafka's threads, against a local broker) fell from 17 to 10 % of a core at that
  rate with the slices, CPU a bench's pipeline shares.
* ``rewrite_time_to_now``: shift event times so a replay looks live. The first event
  is stamped "now", later ones keep their gaps to it divided by ``speed`` (1 = real
  time, 60 = a minute per second), and the sender waits until each event is due, so
  nothing is sent ahead of its time. ``speed=math.inf`` stamps every event with the
  time it is sent (gaps collapsed, no waiting). Out-of-order input is sent at once,
  keeping its (shifted) earlier time.
* ``keep_times``: send the events' own times (a backfill). With a finite ``speed``
  the sends are still paced by the events' gaps divided by ``speed`` (the first at
  once); with ``math.inf`` only ``rate`` paces them.
* Bounded by ``max_events`` and/or ``max_duration_s``; a progress callback runs about
  every ``progress_interval_s`` with events sent, the achieved rate and delivery
  errors; the producer is flushed at the end and :class:`SendStats` returned.

Events whose type is unknown still go out (on the clickstream topic), so the
pipeline's dead-letter path can be exercised with deliberately bad traffic.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from personalization import events as ev
from personalization.settings import Settings, load_settings


class ProducerLike(Protocol):
    """The subset of ``confluent_kafka.Producer`` the sender uses."""

    def produce(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None,
        on_delivery: Callable[[Any, Any], None],
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


# --- token bucket (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    last_s: float


def take_token(
    state: BucketState, now_s: float, *, rate: float, burst: float = 1.0
) -> tuple[BucketState, float]:
    """Take one token at ``now_s``: (new state, seconds to wait before sending).

    The bucket refills at ``rate`` tokens/s up to ``burst``. A token is always
    reserved; when none is available the balance goes negative and the returned wait
    is the time until it is paid back, so a caller that sleeps the wait and sends
    gets exactly ``rate`` events/s after the initial burst. ``rate <= 0`` means
    unlimited (never wait).
    """
    if rate <= 0:
        return BucketState(state.tokens, now_s), 0.0
    elapsed = max(0.0, now_s - state.last_s)
    tokens = min(burst, state.tokens + elapsed * rate) - 1.0
    wait = 0.0 if tokens >= 0 else -tokens / rate
    return BucketState(tokens, max(now_s, state.last_s)), wait


def pause_for(wait_s: float, *, rate: float, burst: float, slice_s: float) -> float:
    """How long to sleep for a token due in ``wait_s``: at least ``slice_s``, so that
    sends come in short bursts rather than one wake-up per event, but never longer than
    the bucket can bank (``burst - 1`` tokens beyond the one taken), so the rate holds.
    ``wait_s`` <= 0 needs no sleep."""
    if wait_s <= 0:
        return 0.0
    if rate <= 0:
        return wait_s
    return max(wait_s, min(slice_s, (burst - 1.0) / rate))


# --- time rewriting (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeShift:
    """Maps source event times onto the wall clock: ``now0 + (t - t0) / speed``."""

    source_start_ms: int
    wall_start_ms: int
    speed: float = 1.0

    def map(self, event_time_ms: int) -> int:
        if math.isinf(self.speed):
            return self.wall_start_ms
        return self.wall_start_ms + round((event_time_ms - self.source_start_ms) / self.speed)


# --- the job's admission window (pure verdict + a counting pass-through) ---------------


def admission_verdict(event_time_ms: int, now_ms: int, limits: ev.ValidationLimits) -> str | None:
    """The job's rejection reason for an event of this time seen at ``now_ms``, or None
    (the same rule as :func:`personalization.events.validate_event`)."""
    if event_time_ms > now_ms + limits.max_future_skew_ms:
        return "event_time_in_future"
    if event_time_ms < now_ms - limits.max_event_age_ms:
        return "event_time_too_old"
    return None


@dataclass(slots=True)
class AdmissionCheck:
    """Counts the events whose own times the job will refuse (to the dead-letter topic):
    older than ``features.max_event_age_s`` or further ahead than ``max_future_skew_s``.

    :meth:`watch` passes events through unchanged; ``warn`` is called once, at the
    first such event (a time-sorted replay meets its oldest event first).
    """

    limits: ev.ValidationLimits
    warn: Callable[[str], None] | None = None
    wall_clock_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    checked: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def check(self, event: dict[str, Any]) -> str | None:
        try:
            event_ms = ev.parse_event_time_ms(event.get("event_time", event.get("event_time_ms")))
        except ev.EventRejected:
            return None  # refused for another reason; not the window's business
        self.checked += 1
        verdict = admission_verdict(event_ms, self.wall_clock_ms(), self.limits)
        if verdict is not None:
            if not self.refused and self.warn is not None:
                self.warn(
                    f"event {event.get('event_id', '?')} at {event_ms} ms is outside the job's "
                    f"admission window ({verdict}: max age "
                    f"{self.limits.max_event_age_ms // 1000} s, future skew "
                    f"{self.limits.max_future_skew_ms // 1000} s); such events go to the "
                    "dead-letter topic"
                )
            self.refused[verdict] += 1
        return verdict

    def watch(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            self.check(event)
            yield event


# --- stats -----------------------------------------------------------------------------


@dataclass(slots=True)
class SendProgress:
    sent: int
    delivered: int
    errors: int
    elapsed_s: float
    rate: float  # events/s over the whole run so far
    interval_rate: float  # events/s since the previous report


@dataclass(slots=True)
class SendStats:
    sent: int = 0
    delivered: int = 0
    errors: int = 0
    # Still queued after the final flush timed out.
    undelivered: int = 0
    elapsed_s: float = 0.0
    per_topic: Counter[str] = field(default_factory=Counter)
    per_type: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    # The (possibly rewritten) event times of the first and last event sent.
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    stopped_by: str = "exhausted"  # "exhausted" | "max_events" | "max_duration"

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressCallback = Callable[[SendProgress], None]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _event_type(event: dict[str, Any]) -> str:
    try:
        return ev.normalize_event_type(event.get("event_type"))
    except ev.EventRejected:
        return str(event.get("event_type"))


class TrafficSender:
    """Produce events to the Kafka input topics; see the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        rate: float = 0.0,
        burst: float | None = None,
        rewrite_time_to_now: bool = False,
        keep_times: bool = False,
        speed: float = 1.0,
        max_events: int | None = None,
        max_duration_s: float | None = None,
        progress: ProgressCallback | None = None,
        progress_interval_s: float = 1.0,
        pace_slice_s: float = 0.005,
        event_id_suffix: str = "",
        producer: ProducerLike | None = None,
        producer_config: dict[str, Any] | None = None,
        flush_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if pace_slice_s < 0:
            raise ValueError("pace_slice_s must be >= 0")
        if speed <= 0:
            raise ValueError("speed must be > 0 (math.inf collapses the gaps)")
        if rewrite_time_to_now and keep_times:
            raise ValueError("rewrite_time_to_now and keep_times exclude each other")
        self.settings = settings or load_settings()
        self.rate = rate
        # Default burst: a tenth of a second of traffic, at least one event.
        self.burst = burst if burst is not None else max(1.0, rate / 10.0)
        self.rewrite_time_to_now = rewrite_time_to_now
        self.keep_times = keep_times
        self.speed = speed
        self.max_events = max_events
        self.max_duration_s = max_duration_s
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self.pace_slice_s = pace_slice_s
        self.event_id_suffix = event_id_suffix
        self.flush_timeout_s = flush_timeout_s
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._sleep = sleep
        self._producer_config = producer_config or {}
        self._producer = producer
        kafka = self.settings.kafka
        self._topics = {
            "clickstream": kafka.clickstream_topic,
            "purchase": kafka.purchase_topic,
            "engagement": kafka.engagement_topic,
        }

    @property
    def producer(self) -> ProducerLike:
        if self._producer is None:
            from confluent_kafka import Producer

            config = {
                "bootstrap.servers": self.settings.kafka.bootstrap_servers,
                "linger.ms": 5,
                "enable.idempotence": True,
                "compression.type": "lz4",
                **self._producer_config,
            }
            self._producer = Producer(config)
        return self._producer

    def topic_for(self, event: dict[str, Any]) -> str:
        return self._topics[ev.topic_family(_event_type(event))]

    def send(self, events: Iterable[dict[str, Any]]) -> SendStats:
        """Send until the events run out or a bound is hit; flush; return the stats."""
        stats = SendStats()
        producer = self.producer
        start = self._clock()
        deadline = start + self.max_duration_s if self.max_duration_s is not None else math.inf
        bucket = BucketState(self.burst, start)
        shift: TimeShift | None = None
        last_report = start
        last_report_sent = 0

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                stats.delivered += 1
            else:
                stats.errors += 1
                if not stats.first_error:
                    stats.first_error = str(err)

        def report(now: float, force: bool = False) -> None:
            nonlocal last_report, last_report_sent
            if self.progress is None or (
                not force and now - last_report < self.progress_interval_s
            ):
                return
            interval = now - last_report
            self.progress(
                SendProgress(
                    sent=stats.sent,
                    delivered=stats.delivered,
                    errors=stats.errors,
                    elapsed_s=now - start,
                    rate=stats.sent / (now - start) if now > start else 0.0,
                    interval_rate=(stats.sent - last_report_sent) / interval
                    if interval > 0
                    else 0.0,
                )
            )
            last_report, last_report_sent = now, stats.sent

        def wait(seconds: float) -> bool:
            """Sleep in slices (serving callbacks and reports); False at the deadline."""
            end = self._clock() + seconds
            while True:
                now = self._clock()
                if now >= deadline:
                    return False
                if now >= end:
                    return True
                producer.poll(0)
                self._sleep(min(min(end, deadline) - now, 0.1))
                report(self._clock())

        for event in events:
            if self.max_events is not None and stats.sent >= self.max_events:
                stats.stopped_by = "max_events"
                break
            if self._clock() >= deadline:
                stats.stopped_by = "max_duration"
                break
            out = dict(event)
            due_ms: int | None = None
            if self.rewrite_time_to_now or (self.keep_times and not math.isinf(self.speed)):
                shift, due_ms = self._schedule(out, shift)
                if due_ms is not None and not math.isinf(self.speed):
                    ahead_ms = due_ms - self._wall_clock_ms()
                    if ahead_ms > 0 and not wait(ahead_ms / 1000.0):
                        stats.stopped_by = "max_duration"
                        break
            bucket, pause = take_token(bucket, self._clock(), rate=self.rate, burst=self.burst)
            pause = pause_for(pause, rate=self.rate, burst=self.burst, slice_s=self.pace_slice_s)
            if pause > 0 and not wait(pause):
                stats.stopped_by = "max_duration"
                break
            if due_ms is not None and self.rewrite_time_to_now and math.isinf(self.speed):
                out["event_time"] = self._wall_clock_ms()
            if self.event_id_suffix and out.get("event_id"):
                out["event_id"] = f"{out['event_id']}{self.event_id_suffix}"
            self._produce(producer, out, on_delivery, stats)
            report(self._clock())
            if self.max_events is not None and stats.sent >= self.max_events:
                stats.stopped_by = "max_events"
                break

        producer.poll(0)
        stats.undelivered = producer.flush(self.flush_timeout_s)
        stats.elapsed_s = self._clock() - start
        report(self._clock(), force=True)
        return stats

    def _schedule(
        self, event: dict[str, Any], shift: TimeShift | None
    ) -> tuple[TimeShift | None, int | None]:
        """(the shift, when the event is due in wall-clock ms); with
        ``rewrite_time_to_now`` the event's time becomes that due time (in place).

        The first event with a readable time fixes the shift. An event without one
        is left as is (the pipeline rejects it) and is due at once (None).
        """
        try:
            source_ms = ev.parse_event_time_ms(event.get("event_time", event.get("event_time_ms")))
        except ev.EventRejected:
            return shift, None
        if shift is None:
            shift = TimeShift(source_ms, self._wall_clock_ms(), self.speed)
        new_ms = shift.map(source_ms)
        if self.rewrite_time_to_now:
            event.pop("event_time_ms", None)
            event["event_time"] = new_ms
        return shift, new_ms

    def _produce(
        self,
        producer: ProducerLike,
        event: dict[str, Any],
        on_delivery: Callable[[Any, Any], None],
        stats: SendStats,
    ) -> None:
        topic = self.topic_for(event)
        value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        user = event.get("user_id")
        key = str(user).encode("utf-8") if user is not None else None
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain
        producer.poll(0)
        stats.sent += 1
        stats.per_topic[topic] += 1
        stats.per_type[_event_type(event)] += 1
        event_ms = event.get("event_time")
        if isinstance(event_ms, int):
            if stats.first_event_ms is None:
                stats.first_event_ms = event_ms
            stats.last_event_ms = event_ms


def send_events(
    events: Iterable[dict[str, Any]], settings: Settings | None = None, **options: Any
) -> SendStats:
    """One-shot convenience: ``TrafficSender(settings, **options).send(events)``."""
    return TrafficSender(settings, **options).send(events)
