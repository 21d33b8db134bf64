"""The backlog: real events shifted to end now, produced to Kafka before the job starts."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import Any

from personalization.settings import Settings

DATASETS = {
    "movielens": "movielens-100k/u.data",
    "taobao": "taobao-userbehavior-sample/UserBehavior_sample.csv.gz",
}


# --- the backlog -----------------------------------------------------------------------


def with_copies(events: list[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """``events`` ``copies`` times over, each copy with users of its own (ids suffixed
    ``~c<k>``; the items are shared), merged in time order: a shop with ``copies`` times
    the users on the same catalog. A longer backlog of the same data, so the steady
    window can start after the JVMs' compilers have done their first minute's work."""
    if copies <= 1:
        return events
    out = list(events)
    for k in range(1, copies):
        for event in events:
            copy = dict(event)
            copy["user_id"] = f"{event.get('user_id')}~c{k}"
            if event.get("event_id") is not None:
                copy["event_id"] = f"{event['event_id']}~c{k}"
            out.append(copy)
    from personalization.events import EventRejected, parse_event_time_ms

    def time_of(event: dict[str, Any]) -> int:
        try:
            return parse_event_time_ms(event.get("event_time"))
        except EventRejected:
            return -1

    out.sort(key=time_of)  # stable: within one time, the copies follow the original
    return out


def load_backlog(
    dataset: str, n: int, settings: Settings, end_ms: int, copies: int = 1
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first ``n`` events of ``dataset`` in time order (``copies`` times over, see
    :func:`with_copies`), shifted to end at ``end_ms``."""
    from personalization.events import EventRejected, parse_event_time_ms
    from traffic import iter_events

    path = Path(settings.datasets_dir) / DATASETS[dataset] if dataset in DATASETS else Path(dataset)
    events = with_copies(list(iter_events(path, limit=n, sort_by_time=True)), copies)
    if not events:
        raise ValueError(f"{path}: no events")
    times: list[int] = []
    for event in events:
        try:
            times.append(parse_event_time_ms(event.get("event_time")))
        except EventRejected:
            times.append(-1)
    last = max(times)
    shift = end_ms - last
    for event, t in zip(events, times, strict=True):
        if t > 0:
            event["event_time"] = t + shift
    valid = [t for t in times if t > 0]
    info = {
        "path": str(path),
        "events": len(events),
        "users": len({e.get("user_id") for e in events}),
        "items": len({e.get("item_id") for e in events if e.get("item_id")}),
        "event_types": dict(Counter(str(e.get("event_type")) for e in events)),
        "copies": copies,
        "source_span_days": round((last - min(valid)) / 86_400_000, 1) if valid else 0,
        "time_shift_days": round(shift / 86_400_000, 1),
    }
    return events, info


def preload(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Produce the backlog to the event topics (as fast as the producer goes).

    In batches of at most 500 events per partition: a consumer hands a record batch over
    whole, and the job's watermark is one over all partitions (taken after parsing), so
    one 10,000-event batch (~75 days of MovieLens in one partition) moved event time that
    far past the other partitions' records. Their users' retention timers then fired
    before their later events were read (job_users_expired in the store check: 9 where 7
    were due), and those users' counts restarted from zero."""
    from traffic import TrafficSender

    sender = TrafficSender(
        settings,
        rate=0.0,
        producer_config={"linger.ms": 20, "batch.num.messages": 500},
        flush_timeout_s=120.0,
    )
    stats = sender.send(events)
    del sender  # the producer: no idle client left when the broker stops
    gc.collect()
    if stats.errors or stats.undelivered or stats.delivered != len(events):
        raise RuntimeError(
            f"preload incomplete: {stats.delivered}/{len(events)} delivered, "
            f"{stats.errors} errors ({stats.first_error}), {stats.undelivered} undelivered"
        )
    return {
        "sent": stats.sent,
        "elapsed_s": round(stats.elapsed_s, 2),
        "rate_ev_s": round(stats.rate),
        "per_topic": dict(stats.per_topic),
    }
