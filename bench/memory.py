"""Memory per user: Flink keyed state and Redis, measured on ≥ 100k simulated users.

Runs the built-in shopping simulation through the job's own state transitions
(``flink_jobs.profile.apply_event``) for ``--users`` users, then measures

- Flink state: the pickled ``UserState`` per user, which is exactly the value the job
  keeps in its ``ValueState`` (PICKLED_BYTE_ARRAY), plus the serialized key;
- Redis: ``used_memory`` growth of a private Redis after the online-store writer wrote
  every user's ``user_profile`` row through Feast (one hash per user),

and extrapolates both to 1M users. Run: ``python -m bench.memory [--users 100000]``.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

from bench.env import format_table, private_settings, say, write_results
from feature_repo.names import USER_PROFILE
from flink_jobs import profile
from ops.infra import redis_server
from personalization.events import validate_event
from personalization.feature_updates import FeatureUpdate
from personalization.online_store import OnlineStoreWriter
from personalization.redis_client import redis_client
from personalization.settings import FeatureSettings
from traffic.generator import GeneratorConfig, TrafficGenerator


def simulate(users: int, events_per_user: float, seed: int) -> dict[str, profile.UserState]:
    cfg = FeatureSettings()
    config = GeneratorConfig(seed=seed, n_users=users)
    states: dict[str, profile.UserState] = {}
    total = int(users * events_per_user)
    now_ms = int(time.time() * 1000)
    for raw in TrafficGenerator(config).events(limit=total):
        event = validate_event(raw, now_ms=now_ms)
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = profile.new_state(event.user_id)
        profile.apply_event(state, event, cfg)
        for due in profile.due_timers(state, cfg):
            if due <= event.event_time_ms:
                profile.advance_time(state, due, cfg)
    return states


def used_memory(client: redis.Redis) -> int:
    info = cast(dict[str, Any], client.info("memory"))
    return int(info["used_memory"])


def run(users: int, events_per_user: float, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    say(f"simulating {users:,} users × ~{events_per_user:g} events through the job's state code")
    states = simulate(users, events_per_user, seed)
    simulated_s = time.monotonic() - started
    sizes = [len(pickle.dumps(s)) + len(s.user_id.encode()) for s in states.values()]
    events = sum(s.events_total for s in states.values())
    cfg = FeatureSettings()
    with tempfile.TemporaryDirectory(prefix="pz-bench-mem-") as tmp:
        settings = private_settings(Path(tmp))
        redis_server.start(settings)
        try:
            client = redis_client(settings.redis, request_path=False)
            before = used_memory(client)
            writer = OnlineStoreWriter(settings)
            batch: list[FeatureUpdate] = []
            for state in states.values():
                row = profile.user_feature_row(state, cfg)
                batch.append(FeatureUpdate(USER_PROFILE, state.user_id, state.version_us, row))
                if len(batch) >= 5000:
                    writer.write(batch)
                    batch.clear()
            writer.write(batch)
            after = used_memory(client)
            keys = int(cast(int, client.dbsize()))
        finally:
            redis_server.stop(settings)
    redis_per_user = (after - before) / max(1, keys)
    flink_per_user = statistics.fmean(sizes)
    return {
        "users": len(states),
        "events": events,
        "simulate_s": round(simulated_s, 1),
        "flink_state_bytes_per_user": {
            "mean": round(flink_per_user),
            "p50": sorted(sizes)[len(sizes) // 2],
            "p99": sorted(sizes)[int(len(sizes) * 0.99)],
            "max": max(sizes),
        },
        "redis_bytes_per_user": round(redis_per_user),
        "redis_keys": keys,
        "extrapolated_1m_users_gb": {
            "flink_state": round(flink_per_user * 1_000_000 / 1e9, 2),
            "redis": round(redis_per_user * 1_000_000 / 1e9, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events-per-user", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    result = run(args.users, args.events_per_user, args.seed)
    flink = result["flink_state_bytes_per_user"]
    print(
        format_table(
            ["measure", "value"],
            [
                ["users / events", f"{result['users']:,} / {result['events']:,}"],
                [
                    "Flink state bytes/user (mean, p50, p99, max)",
                    f"{flink['mean']}, {flink['p50']}, {flink['p99']}, {flink['max']}",
                ],
                ["Redis bytes/user", result["redis_bytes_per_user"]],
                ["1M users: Flink state GB", result["extrapolated_1m_users_gb"]["flink_state"]],
                ["1M users: Redis GB", result["extrapolated_1m_users_gb"]["redis"]],
            ],
        )
    )
    path = write_results("memory", result)
    say(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
