"""The soak's two load processes, each in a session of its own: the ingest sender and
the open-loop Recommend load (started by :mod:`bench.soak.scenario`, reporting on a
queue)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.stats import latency_summary
from personalization.settings import settings_from_json
from traffic.generator import GeneratorConfig

__all__ = ["ServeLoad", "UserPool", "ingest_main", "serve_main"]


# --- ingest ------------------------------------------------------------------------------


def ingest_main(
    settings_json: str,
    rate: float,
    max_duration_s: float,
    config: GeneratorConfig,
    progress_s: float,
    stop: Any,
    out: Any,
) -> None:
    """The ingest process: the simulator's events at ``rate`` until ``stop`` is set (or
    ``max_duration_s``); progress, then the totals and the users sent, on ``out``."""
    os.setsid()  # own session: a Ctrl-C in the terminal reaches only the driver
    from traffic import TrafficGenerator, TrafficSender

    settings = settings_from_json(settings_json)
    users: set[str] = set()

    def events() -> Iterator[dict[str, Any]]:
        for event in TrafficGenerator(config).events():
            if stop.is_set():
                return
            users.add(event["user_id"])
            yield event

    def progress(p: Any) -> None:
        out.put(
            {
                "kind": "ingest",
                "t": time.time(),
                "sent": p.sent,
                "delivered": p.delivered,
                "errors": p.errors,
                "interval_rate": round(p.interval_rate, 1),
            }
        )

    sender = TrafficSender(
        settings,
        rate=rate,
        rewrite_time_to_now=True,
        speed=math.inf,  # every event stamped with its send time
        max_duration_s=max_duration_s,
        progress=progress,
        progress_interval_s=progress_s,
    )
    out.put({"kind": "ingest_start", "t": time.time()})
    stats = sender.send(events())
    out.put(
        {
            "kind": "ingest_done",
            "sent": stats.sent,
            "delivered": stats.delivered,
            "errors": stats.errors,
            "undelivered": stats.undelivered,
            "elapsed_s": round(stats.elapsed_s, 1),
            "achieved_rate": round(stats.rate, 1),
            "first_error": stats.first_error,
            "stopped_by": stats.stopped_by,
            "per_topic": dict(stats.per_topic),
            "per_type": dict(stats.per_type),
            "users": sorted(users),
        }
    )


# --- serving load ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeLoad:
    """What the serving load process does (pickled into it)."""

    target: str
    rps: float
    duration_s: float
    interval_s: float
    k: int
    deadline_s: float
    channels: int
    seed: int
    # Users to ask for: those of the simulator's events sent at least ``margin_s`` ago,
    # replayed from the same deterministic generator as the ingest process.
    generator: GeneratorConfig
    ingest_rate: float
    ingest_t0: float  # wall clock of the ingest's first send
    margin_s: float = 15.0


class UserPool:
    """Users of the simulator's events sent by now minus a margin, growing with time."""

    def __init__(self, load: ServeLoad) -> None:
        from traffic import TrafficGenerator

        self.load = load
        self._events = TrafficGenerator(load.generator).events()
        self._seen: set[str] = set()
        self.users: list[str] = []
        self.events = 0

    def grow(self) -> None:
        load = self.load
        due = int(load.ingest_rate * (time.time() - load.ingest_t0 - load.margin_s))
        while self.events < due:
            user = next(self._events)["user_id"]
            self.events += 1
            if user not in self._seen:
                self._seen.add(user)
                self.users.append(user)


def serve_main(load: ServeLoad, out: Any) -> None:
    """The serving load process (see :func:`_serve_async`)."""
    os.setsid()  # own session: a Ctrl-C in the terminal reaches only the driver
    asyncio.run(_serve_async(load, out))


async def _serve_async(load: ServeLoad, out: Any) -> None:
    """Open loop at ``rps`` (:func:`bench.loadgen.open_loop`: latency from the scheduled
    send); one summary per ``interval_s`` on ``out``, then the totals."""
    from bench.loadgen import Recorder, open_channels, open_loop
    from personalization.v1 import recommender_pb2, recommender_pb2_grpc

    target, rps, duration_s, interval_s = load.target, load.rps, load.duration_s, load.interval_s
    k, deadline_s, n_channels = load.k, load.deadline_s, load.channels
    pool = UserPool(load)
    pool.grow()
    if not pool.users:
        raise RuntimeError("no user has been sent long enough ago to ask for")
    loop = asyncio.get_running_loop()
    rng = random.Random(load.seed)
    chans = await open_channels(target, n_channels)
    stubs = [recommender_pb2_grpc.RecommenderStub(ch) for ch in chans]
    start = loop.time() + 0.05
    wall_start = time.time() + (start - loop.time())
    end = start + duration_s
    n = max(1, math.ceil(duration_s / interval_s - 1e-9))
    bounds = [(start + i * interval_s, min(end, start + (i + 1) * interval_s)) for i in range(n)]
    # Each recorder counts whatever it is handed; the interval is chosen at send time.
    recs = [Recorder(-math.inf, math.inf) for _ in range(n)]
    cpu0 = time.process_time()

    def report(i: int) -> dict[str, Any]:
        r = recs[i]
        t_from, t_to = bounds[i]
        span = t_to - t_from
        return {
            "kind": "serve",
            "i": i,
            "t_from_s": round(t_from - start, 1),
            "t_to_s": round(t_to - start, 1),
            "sent": r.sent_counted,
            "ok": r.ok,
            "ok_rps": round(r.ok / span, 1) if span > 0 else 0.0,
            "errors": dict(r.errors),
            "error_count": sum(r.errors.values()),
            "lost": r.sent_counted - r.ok - sum(r.errors.values()),
            "personalized": r.personalized,
            "empty": r.empty,
            "latency": latency_summary(r.latency),
        }

    async def reporter() -> None:
        for i, (_, t_to) in enumerate(bounds):
            # Every request of the interval has answered or timed out by then.
            await asyncio.sleep(max(0.0, t_to + deadline_s + 0.3 - loop.time()))
            out.put(report(i))

    reporting = loop.create_task(reporter())

    def next_request(scheduled: float) -> tuple[Any, Recorder]:
        rec = recs[min(int((scheduled - start) // interval_s), n - 1)]
        return recommender_pb2.RecommendRequest(user_id=rng.choice(pool.users), k=k), rec

    next_grow = start + 1.0

    def grow_pool(now: float) -> None:
        # Users whose events were sent long enough ago join the pool once a second.
        nonlocal next_grow
        if now >= next_grow:
            pool.grow()
            next_grow = now + 1.0

    await open_loop(stubs, start, end, rps, deadline_s, next_request, between=grow_pool)
    await reporting
    for channel in chans:
        await channel.close()
    errors: dict[str, int] = {}
    for r in recs:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    sent = sum(r.sent_counted for r in recs)
    ok = sum(r.ok for r in recs)
    out.put(
        {
            "kind": "serve_done",
            "wall_start": wall_start,
            "duration_s": duration_s,
            "target_rps": rps,
            "users_asked_for_at_end": len(pool.users),
            "sent": sent,
            "ok": ok,
            "achieved_rps": round(ok / duration_s, 1),
            "errors": errors,
            "error_count": sum(errors.values()),
            "lost": sent - ok - sum(errors.values()),
            "personalized": sum(r.personalized for r in recs),
            "empty": sum(r.empty for r in recs),
            "latency": latency_summary([x for r in recs for x in r.latency]),
            "self_cpu_pct": round(100.0 * (time.process_time() - cpu0) / duration_s, 1),
        }
    )
