"""The floor: the least a Python grpc.aio server can do for the same Recommend RPC.

    python -m bench.floor_server --port P --redis-host H --redis-port R
                                 [--workers N] [--items 10000] [--dim 32]

One HMGET of the user's real row (the same Redis key and fields as
``serving.online_features.UserFeatureReader``, values not decoded), numpy scores of a
``items x dim`` float32 matrix against one vector, top-k by ``argpartition``, k
``RecommendedItem``s in the answer: no catalog, candidates, rules, metrics, exposures,
health or access control. ``bench serving`` measures it beside our server with the
same load tool, so "ours / floor" says how much of what Python allows here ours uses.
With ``--workers N`` it forks N such servers on one port (SO_REUSEPORT), as
``serving/workers.py`` does, so the floor is measured per process count too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import grpc
import numpy as np
import redis

from feature_repo.names import USER_CF, USER_PROFILE
from personalization.feature_store import feature_kinds, field_key, redis_key, ts_field
from personalization.v1 import recommender_pb2, recommender_pb2_grpc


class FloorRecommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, client: redis.Redis, project: str, items: int, dim: int) -> None:
        rng = np.random.default_rng(7)
        self._client = client
        self._project = project
        self._matrix = rng.standard_normal((items, dim), dtype=np.float32)
        self._vector = rng.standard_normal(dim, dtype=np.float32)
        self._ids = [f"sku-{i:06d}" for i in range(items)]
        self._fields = [field_key(USER_PROFILE, name) for name in feature_kinds(USER_PROFILE)]
        self._fields.append(field_key(USER_CF, "cf_vector"))
        self._fields.append(ts_field(USER_PROFILE))

    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: Any
    ) -> recommender_pb2.RecommendResponse:
        key = redis_key(self._project, USER_PROFILE, request.user_id)
        values = self._client.execute_command("HMGET", key, *self._fields)
        k = request.k or 10
        scores = self._matrix @ self._vector
        top = np.argpartition(scores, -k)[-k:]
        top = top[np.argsort(scores[top])[::-1]]
        return recommender_pb2.RecommendResponse(
            items=[
                recommender_pb2.RecommendedItem(item_id=self._ids[i], score=float(scores[i]))
                for i in top
            ],
            personalized=values[0] is not None,
        )


async def _serve(args: argparse.Namespace) -> None:
    client = redis.Redis(host=args.redis_host, port=args.redis_port)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if args.workers > 1 else 0)])
    recommender_pb2_grpc.add_RecommenderServicer_to_server(
        FloorRecommender(client, args.project, args.items, args.dim), server
    )
    if server.add_insecure_port(f"{args.host}:{args.port}") == 0:
        raise SystemExit(f"cannot bind {args.host}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor server pid {os.getpid()} on {args.host}:{args.port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--project", default="personalization")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers <= 1:
        asyncio.run(_serve(args))
        return 0
    # Fork before any gRPC object exists (grpc's examples/python/multiprocessing).
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            asyncio.run(_serve(args))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        failed |= int(os.waitstatus_to_exitcode(status) != 0)
    return failed


if __name__ == "__main__":
    sys.exit(main())
