"""The serving process: ``python -m serving.server [--no-collector]``.

Thin wiring over the modules that each hold one concept:

- :mod:`serving.app`: :class:`ServingApp` (the asyncio gRPC server, its components and
  their lifecycle) and :func:`serve` (run until SIGTERM/SIGINT, metrics endpoint);
- :mod:`serving.servicers`: the Recommender and Collector servicers and their status
  codes; :mod:`serving.admin`: the Admin servicer;
- :mod:`serving.proto_mapping`: domain objects to protobuf messages;
- :mod:`serving.health`: the health entries and what each one means;
- :mod:`serving.exposure_log`: the exposure record of every answer.

Their public names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from personalization.settings import Settings, load_settings
from serving.app import ServingApp, serve
from serving.health import (
    ADMIN_SERVICE,
    COLLECTOR_SERVICE,
    ONLINE_STORE_HEALTH,
    RECOMMENDER_SERVICE,
    HealthState,
)
from serving.proto_mapping import profile_message
from serving.servicers import CollectorServicer, RecommenderServicer

__all__ = [
    "ADMIN_SERVICE",
    "COLLECTOR_SERVICE",
    "ONLINE_STORE_HEALTH",
    "RECOMMENDER_SERVICE",
    "CollectorServicer",
    "HealthState",
    "RecommenderServicer",
    "ServingApp",
    "main",
    "profile_message",
    "run",
    "serve",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="personalization gRPC server")
    parser.add_argument(
        "--no-collector", action="store_true", help="serve recommendations only (no Kafka)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="serving processes sharing the port (default: serving.workers, "
        "PZ_SERVING__WORKERS; see serving/workers.py)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    sys.exit(run(load_settings(), args.workers, enable_collector=not args.no_collector))


def run(settings: Settings, workers: int | None = None, **kwargs: Any) -> int:
    """Serve until SIGTERM/SIGINT with ``workers`` processes (default
    ``serving.workers``); the exit code."""
    n = settings.serving.workers if workers is None else workers
    if n < 1:
        raise ValueError(f"--workers must be at least 1, not {n}")
    if n == 1:
        serve(settings, block=True, **kwargs)
        return 0
    # Forks before any gRPC object or thread exists in this process.
    from serving.workers import serve_workers

    return serve_workers(settings, n, **kwargs)


if __name__ == "__main__":
    main()
