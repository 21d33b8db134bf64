"""Scenario ``soak``: a bounded mixed run (steady ingest + steady Recommend load).

    python -m bench soak --minutes 10 --rate 150 --rps 80

On a private stack (Redis, Kafka, the Flink job, the online-store writer, the gRPC
server; :mod:`bench.env`) two load processes run side by side for ``--minutes``:

* ingest: the built-in shopping simulator sent through
  :class:`~traffic.TrafficSender` at ``--rate`` events/s (event times
  stamped at send), over a bounded key space (``--gen-users`` users, ``--gen-items``
  items), so the job's keyed state and Redis reach their working-set size during the
  warm-up and growth after it is not new data (the ``redis keys`` column shows it);
* serving: an open-loop ``Recommend`` load at ``--rps`` (grpc.aio, the request path
  of :mod:`bench.loadgen`, deadline ``--deadline``) for users that already have
  features: the load process replays the same deterministic simulator and asks only
  for users whose events were sent at least a few seconds earlier.

Every ``--sample-interval`` seconds the driver records the RSS (and anonymous RSS) of
every process of the stack (the job's Python launcher and its JVM, which runs the
Python operators in thread mode; the writer; the server; Redis; Kafka), the JVMs' heap
(``jstat -gc``), the writer's and the job's consumer lag, a short burst of freshness
probes (:func:`bench.freshness.probe_loop`), the dead-letter topic, Redis' key count,
the components' error counters, the CPU used meanwhile (others = other tenants), and
the serving load's errors and latency for that interval.

At the end it checks that every event sent reached the features (the sum of the
simulated users' ``events_total`` in Redis equals the events sent, and the job's
accepted-events counter equals events sent plus probes: no replay), fits a line to
each process's RSS after the warm-up, prints the tables and a verdict, and fails
(exit 1) when anything counted as an error is non-zero or a process's memory is not
flat. Errors: Recommend calls that failed or missed their deadline, server RPC errors,
undelivered events, dead letters, writer errors, events missing from the features,
lost freshness probes, ERROR lines or tracebacks in the logs, a stack process exiting.
Answers served with a fallback (Redis slower than its 50 ms socket timeout: trending,
``personalized=false``, by design) are reported as degraded, not as errors.

Flat: a fitted RSS slope below ``--max-slope-mb-min`` (default 1 MB/min) after the
warm-up. At 150 events/s and 80 requests/s that detects a leak of ~116 bytes per event
or ~218 bytes per request in one process; the legitimate growth of the job's state in
a bounded key space (dedup ids, at most 256 per user) is a few hundred KB per minute.
The JVMs (Kafka, the job) start with ``-XX:+AlwaysPreTouch`` (``JAVA_TOOL_OPTIONS``;
``--no-pretouch`` to skip): their committed heap is resident from the start, instead
of being touched region by region for minutes, which reads as RSS growth but is not
(``jstat`` shows the committed heap; growth beyond it would be heap expansion or
off-heap memory, which the soak is meant to catch).

The modules, by concept: :mod:`~bench.soak.load` (the two load processes),
:mod:`~bench.soak.sampling` (what is recorded about the stack's processes),
:mod:`~bench.soak.verdict` (memory fits, error counts, pass or fail),
:mod:`~bench.soak.report` (the tables) and :mod:`~bench.soak.scenario` (the run).
"""

from __future__ import annotations

from bench.soak.report import report
from bench.soak.scenario import add_arguments, run_soak

__all__ = ["add_arguments", "report", "run_soak"]
