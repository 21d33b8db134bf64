"""Trigger delivery latency: event produced -> webhook received, on a private stack.

    python -m bench.triggers [--rate 500] [--duration 60] [--warmup 20]

Starts Redis, Kafka, the Flink job (MiniCluster, the default rule file) and the
dispatcher (``python -m dispatcher``, one webhook) on free 127.0.0.1 ports, and an HTTP
receiver in this process. The load is waves of fresh users, each viewing three products:
``browse_intent`` (3 views within 10 minutes) fires once per user on the third view. A
trigger's latency is the wall time from the ``produce`` call of that third view to the
receiver reading the webhook's body; it crosses the producer, the broker, the job
(parse, keyed state, the rule), its exactly-once Kafka sink (visible to read_committed
consumers when the checkpoint commits the transaction: ``flink.checkpoint_interval_ms``),
the dispatcher and the HTTP POST. A second figure starts at the trigger's append time on
the ``triggers`` topic (LogAppendTime, read back at the end), which isolates the
checkpoint wait plus the dispatcher.

Only the measured phase's users count; the warm-up's are sent at the same rate first.
Results go to ``bench/results/triggers-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.env import BenchStack, format_table, machine_info, say, venv_on_path, write_results
from bench.stats import latency_summary
from ops import stack
from ops.infra.processes import free_port
from personalization.privacy import pseudonymizer
from personalization.settings import DispatcherSettings, Settings, WebhookSettings

RULE = "browse_intent"
VIEWS_PER_USER = 3


@dataclass
class Receiver:
    """Webhook bodies as they arrive: (wall time read, parsed body)."""

    got: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                with receiver.lock:
                    receiver.got.append((now, json.loads(payload)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pz"
        return self

    def users(self) -> set[str]:
        with self.lock:
            return {body["user"]["id"] for _, body in self.got}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _view(user: str, item: int) -> bytes:
    return json.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "user_id": user,
            "event_type": "product_view",
            "event_time": int(time.time() * 1000),
            "item_id": f"item-{item}",
            "category": f"cat-{item % 20}",
        }
    ).encode()


def send_waves(
    settings: Settings, producer: Producer, prefix: str, rate: float, duration_s: float, wave: int
) -> tuple[dict[str, float], int, float]:
    """Waves of ``wave`` users (first views, second views, third views) at ``rate``
    events/s for ``duration_s``; returns (user -> send time of its third view, events
    sent, seconds taken)."""
    topic = settings.kafka.clickstream_topic
    third: dict[str, float] = {}
    sent = 0
    start = time.monotonic()
    due = start
    n = 0
    while time.monotonic() - start < duration_s:
        users = [f"{prefix}-{n + i}" for i in range(wave)]
        n += wave
        for view in range(VIEWS_PER_USER):
            for i, user in enumerate(users):
                due += 1.0 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.produce(topic, _view(user, n + i + view), user.encode())
                if view == VIEWS_PER_USER - 1:
                    third[user] = time.time()
                sent += 1
                producer.poll(0)
    producer.flush(30)
    return third, sent, time.monotonic() - start


def _append_times(settings: Settings) -> dict[tuple[int, int], float]:
    """(partition, offset) -> append time (s) of every record on the triggers topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-triggers-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.kafka.triggers_topic
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: dict[tuple[int, int], float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        out.get((p, ends[p] - 1)) is None for p in partitions if ends[p] > 0
    ):
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error() is None:
                out[(msg.partition() or 0, msg.offset() or 0)] = msg.timestamp()[1] / 1000
    consumer.close()
    return out


def run(bench: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    receiver = Receiver().start()
    secret_file = bench.run_path / "webhook_secret"
    secret_file.write_text(secrets.token_hex(16))
    secret_file.chmod(0o600)
    hook = WebhookSettings(
        name="bench", url=receiver.url, secret_file=str(secret_file), rules=(RULE,)
    )
    bench.settings = bench.settings.model_copy(
        update={
            "dispatcher": DispatcherSettings(
                webhooks=(hook,), port=free_port(), metrics_port=free_port()
            )
        }
    )
    settings = bench.settings
    stored = pseudonymizer(settings.privacy.hmac_secret)
    try:
        bench.start_redis()
        bench.start_kafka()
        bench.start_component(stack.FLINK_JOB)
        bench.start_component(stack.DISPATCHER)
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 1})
        # Ready when a probe user's trigger reaches the receiver: the whole path answers.
        deadline = time.monotonic() + 300
        attempt = 0
        while True:
            probe = f"probe-{attempt}"
            send_waves(settings, producer, probe, 50.0, 0.01, 1)
            wait_until = time.monotonic() + 15
            while time.monotonic() < wait_until and stored(f"{probe}-0") not in receiver.users():
                time.sleep(0.2)
            if stored(f"{probe}-0") in receiver.users():
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no trigger reached the webhook in 300 s")
            attempt += 1
        say(f"path ready (probe {attempt + 1}); warm-up {args.warmup:g}s at {args.rate:g} ev/s")
        send_waves(settings, producer, "warm", args.rate, args.warmup, args.wave)
        say(f"measuring {args.duration:g}s at {args.rate:g} ev/s")
        third, sent, took = send_waves(settings, producer, "m", args.rate, args.duration, args.wave)
        wanted = {stored(user): user for user in third}
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and not set(wanted) <= receiver.users():
            time.sleep(0.5)
        appended = _append_times(settings)
    finally:
        # Stopped here: BenchStack.stop knows the job, the writer and the server only.
        bench.stop_component(stack.DISPATCHER)
        receiver.stop()
    with receiver.lock:
        got = list(receiver.got)
    e2e, topic_to_hook, seen = [], [], set()
    duplicates = 0
    for received_at, body in got:
        user = wanted.get(body["user"]["id"])
        if user is None:
            continue
        if user in seen:
            duplicates += 1
            continue
        seen.add(user)
        e2e.append(received_at - third[user])
        position = body.get("position", {})
        append = appended.get((position.get("partition"), position.get("offset")))
        if append is not None:
            topic_to_hook.append(received_at - append)
    return {
        "parameters": {
            "rate_ev_s": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wave_users": args.wave,
            "checkpoint_interval_ms": settings.flink.checkpoint_interval_ms,
        },
        "sent_events": sent,
        "achieved_rate_ev_s": round(sent / took, 1),
        "users": len(third),
        "triggers_delivered": len(seen),
        "triggers_missing": len(third) - len(seen),
        "duplicate_deliveries": duplicates,
        "event_to_webhook": latency_summary(e2e),
        "topic_to_webhook": latency_summary(topic_to_hook),
    }


def report(r: dict[str, Any]) -> str:
    rows = [
        (
            "events/s target / achieved",
            f"{r['parameters']['rate_ev_s']:g} / {r['achieved_rate_ev_s']}",
        ),
        (
            "users (one trigger each) / delivered / missing",
            f"{r['users']} / {r['triggers_delivered']} / {r['triggers_missing']}",
        ),
        ("duplicate deliveries", r["duplicate_deliveries"]),
    ]
    for label, key in (
        ("event produced -> webhook", "event_to_webhook"),
        ("trigger on topic -> webhook", "topic_to_webhook"),
    ):
        s = r[key]
        rows.append(
            (
                f"{label} p50 / p90 / p99 / max (ms)",
                f"{s.get('p50_ms')} / {s.get('p90_ms')} / {s.get('p99_ms')} / {s.get('max_ms')}",
            )
        )
    return format_table(["trigger delivery", ""], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triggers", description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds sent first")
    parser.add_argument("--wave", type=int, default=50, help="users per wave")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the rest")
    parser.add_argument("--keep-run-dir", action="store_true")
    args = parser.parse_args(argv)
    venv_on_path()
    info = machine_info()
    results: dict[str, Any] = {
        "scenario": "triggers",
        "command": " ".join(
            ["python -m bench.triggers", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
    }
    bench = BenchStack.create(keep_run_dir=args.keep_run_dir)
    say(f"private stack in {bench.run_path}")
    try:
        results["triggers"] = run(bench, args)
    except BaseException as exc:
        results["error"] = repr(exc)
        for component in (stack.FLINK_JOB, stack.DISPATCHER):
            if component.name in bench.started:
                print(f"--- {component.name} ---\n{bench.log_tail(component)}", file=sys.stderr)
        raise
    finally:
        bench.stop()
        path = write_results("triggers", results)
        say(f"results: {path}")
    print(report(results["triggers"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
