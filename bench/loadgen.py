"""gRPC load generator for Recommend or SimilarItems (``--method``), run as its own
process (``python -m bench.loadgen``).

Kept out of the driver process so the load it generates does not share a GIL with
anything else the benchmark does; it still shares the machine's cores with the server,
which the report states next to the figures.

Modes (grpc.aio, one event loop, ``--channels`` separate HTTP/2 connections):

* ``open``: requests are issued on a fixed schedule (``--rate`` per second) whatever
  the server does, so a slow server meets a growing queue rather than a slowing client.
  Latency is measured from each request's *scheduled* start (no coordinated omission);
  the time from the actual send is reported as ``service``.
* ``closed``: ``--concurrency`` workers, each sending its next request when the previous
  one has answered: the saturation throughput.

The first ``--warmup`` seconds are sent but not counted. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bench.stats import latency_summary
from personalization.v1 import recommender_pb2, recommender_pb2_grpc


class Recorder:
    def __init__(self, count_from: float, count_until: float) -> None:
        self.count_from = count_from
        self.count_until = count_until
        self.latency: list[float] = []
        self.service: list[float] = []
        self.errors: Counter[str] = Counter()
        self.empty = 0
        self.personalized = 0
        self.ok = 0
        self.sent_counted = 0

    def counts(self, scheduled: float) -> bool:
        return self.count_from <= scheduled < self.count_until


async def record_call(
    stub: recommender_pb2_grpc.RecommenderStub,
    request: recommender_pb2.RecommendRequest,
    deadline_s: float,
    scheduled: float,
    rec: Recorder,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """One Recommend (or SimilarItems, by the request's type) call; its outcome and
    latency (from ``scheduled``) go to ``rec``."""
    sent = loop.time()
    counted = rec.counts(scheduled)
    method = (
        stub.SimilarItems
        if isinstance(request, recommender_pb2.SimilarItemsRequest)
        else stub.Recommend
    )
    try:
        reply = await method(request, timeout=deadline_s)
    except grpc.aio.AioRpcError as exc:
        if counted:
            rec.errors[exc.code().name] += 1
        return
    done = loop.time()
    if not counted:
        return
    rec.ok += 1
    rec.latency.append(done - scheduled)
    rec.service.append(done - sent)
    if not reply.items:
        rec.empty += 1
    if getattr(reply, "personalized", False):
        rec.personalized += 1


class _ApiKey(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Presents an API key on every call (a server with access control on)."""

    def __init__(self, key: str) -> None:
        self.metadata = (("x-api-key", key),)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=tuple(details.metadata or ()) + self.metadata)
        return await continuation(details, request)


async def open_channels(target: str, n: int, api_key: str = "") -> list[grpc.aio.Channel]:
    """``n`` channels to ``target``, each ready: separate subchannel pools, so each
    channel is its own TCP/HTTP2 connection; each call presents ``api_key`` if given."""
    interceptors = [_ApiKey(api_key)] if api_key else None
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", i)],
            interceptors=interceptors,
        )
        for i in range(n)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    return channels


async def open_loop(
    stubs: Sequence[recommender_pb2_grpc.RecommenderStub],
    start: float,
    end: float,
    rate: float,
    deadline_s: float,
    next_request: Callable[[float], tuple[Any, Recorder]],
    between: Callable[[float], None] | None = None,
) -> None:
    """Send Recommend at ``rate`` per second from ``start`` to ``end`` (loop time) on a
    fixed schedule whatever the server does, round robin over ``stubs``; then wait for
    the last answers (at most the deadline and a second).

    ``next_request(scheduled)`` gives each request and the recorder of its outcome;
    ``between(now)`` runs after each batch of due requests, before the sleep.
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    i = 0
    while True:
        now = loop.time()
        # Send everything due by now (catches up after a late wake-up).
        while True:
            scheduled = start + i * interval
            if scheduled > now or scheduled >= end:
                break
            request, rec = next_request(scheduled)
            task = loop.create_task(
                record_call(stubs[i % len(stubs)], request, deadline_s, scheduled, rec, loop)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if rec.counts(scheduled):
                rec.sent_counted += 1
            i += 1
        if start + i * interval >= end:
            break
        if between is not None:
            between(now)
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=deadline_s + 1.0)


def _request(rng: random.Random, args: argparse.Namespace) -> Any:
    user_id = f"{args.user_prefix}{rng.randrange(args.users)}"
    if args.method == "similar":
        # With a user: the purchase exclusion costs the same one HMGET as Recommend.
        item_id = f"{args.item_prefix}{rng.randrange(args.items):06d}"
        return recommender_pb2.SimilarItemsRequest(item_id=item_id, k=args.k, user_id=user_id)
    return recommender_pb2.RecommendRequest(user_id=user_id, k=args.k)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    api_key = ""
    if args.api_key_file:
        with open(args.api_key_file, encoding="ascii") as f:
            api_key = f.read().strip()
    channels = await open_channels(args.target, args.channels, api_key)
    stubs = [recommender_pb2_grpc.RecommenderStub(ch) for ch in channels]
    start = loop.time() + 0.05
    count_from = start + args.warmup
    end = count_from + args.duration
    rec = Recorder(count_from, end)
    cpu_window: list[float] = []

    async def cpu_probe() -> None:
        # This process's CPU over the counted window only (no start-up, no warm-up).
        await asyncio.sleep(max(0.0, count_from - loop.time()))
        cpu_window.append(time.process_time())
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu_window.append(time.process_time())

    probe = loop.create_task(cpu_probe())

    if args.mode == "open":

        def next_request(scheduled: float) -> tuple[Any, Recorder]:
            return _request(rng, args), rec

        await open_loop(stubs, start, end, args.rate, args.deadline, next_request)
    else:

        async def worker(w: int) -> None:
            stub = stubs[w % len(stubs)]
            wrng = random.Random(args.seed * 1000 + w)
            while True:
                now = loop.time()
                if now >= end:
                    return
                req = _request(wrng, args)
                if rec.counts(now):
                    rec.sent_counted += 1
                await record_call(stub, req, args.deadline, now, rec, loop)

        delay = start - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(worker(w) for w in range(args.concurrency)))

    await probe
    for channel in channels:
        await channel.close()
    cpu_pct = 100.0 * (cpu_window[1] - cpu_window[0]) / args.duration
    completed = rec.ok + sum(rec.errors.values())
    return {
        "tool": "python-grpc-aio",
        "method": args.method,
        "mode": args.mode,
        "target_rps": args.rate if args.mode == "open" else None,
        "concurrency": args.concurrency if args.mode == "closed" else None,
        "channels": args.channels,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sent": rec.sent_counted,
        "ok": rec.ok,
        "errors": dict(rec.errors),
        "error_count": sum(rec.errors.values()),
        "empty_responses": rec.empty,
        "personalized": rec.personalized,
        "achieved_rps": round(rec.ok / args.duration, 1),
        "completed_rps": round(completed / args.duration, 1),
        # Open loop: from the scheduled send time; closed loop: same as service.
        "latency": latency_summary(rec.latency),
        "service": latency_summary(rec.service),
        "self_cpu_pct": round(cpu_pct, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--mode", choices=("open", "closed"), required=True)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--user-prefix", default="bu-")
    p.add_argument("--method", choices=("recommend", "similar"), default="recommend")
    p.add_argument("--items", type=int, default=10_000, help="similar: catalog items")
    p.add_argument("--item-prefix", default="bsku-sku-", help="similar: id = prefix + %%06d")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--deadline", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--api-key-file", default="", help="a file holding the API key to present (if any)"
    )
    args = p.parse_args(argv)
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    result["wall_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
