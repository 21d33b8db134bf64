"""A single-node Kafka 4.1 (KRaft, no ZooKeeper) for tests and the local stack.

One JVM runs both roles (``process.roles=broker,controller``) from the jars that
``infra/pom.xml`` copies into ``<run_dir>/jars/kafka``:

* clients: ``settings.kafka.bootstrap_servers`` (first entry's host:port);
* controller: same host, ``settings.kafka.controller_port``.

The controller quorum is the static ``controller.quorum.voters`` form rather than a
``--standalone`` dynamic quorum: the voter endpoint is then read from
server.properties on every start instead of being frozen into the metadata log, so a
run dir survives a change of controller port. Storage is formatted once, with a fixed
cluster id, when ``<run_dir>/kafka/data/meta.properties`` is missing.

Tuned for a 2-core box: 512 MB heap, 2 network / 2 I/O threads, replication factor 1 for
the internal topics, small internal topic partition counts, no initial rebalance delay,
small log-cleaner buffer. Auto topic creation stays on (with ``settings.kafka.partitions``
partitions) so ad-hoc test topics work; the pipeline's topics come from
:func:`ensure_topics` (which ``KAFKA.start`` runs).

    personalize infra start|stop|status|reset kafka
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from ops.infra.jars import ensure_jars, java_env, java_executable
from ops.infra.processes import ManagedProcess, split_host_port, wait_until
from ops.infra.service import Launch, ProcessService
from personalization.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0
NODE_ID = 1
# 16 bytes, base64url without padding: what `kafka-storage.sh random-uuid` prints.
CLUSTER_ID = (
    base64.urlsafe_b64encode(uuid.uuid5(uuid.NAMESPACE_URL, "pz-local-kafka").bytes)
    .decode()
    .rstrip("=")
)
HEAP_OPTS = ["-Xms256m", "-Xmx512m"]
JVM_OPTS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]


def kafka_dir(settings: Settings) -> Path:
    return settings.run_path / "kafka"


def data_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "data"


def config_file(settings: Settings) -> Path:
    return kafka_dir(settings) / "server.properties"


def log4j_file(settings: Settings) -> Path:
    return kafka_dir(settings) / "log4j2.properties"


def process(settings: Settings) -> ManagedProcess:
    # Our server.properties path is on the java command line: it identifies this broker.
    return ManagedProcess("kafka", settings.run_path, markers=(str(config_file(settings)),))


def listener_address(settings: Settings) -> tuple[str, int]:
    return split_host_port(settings.kafka.bootstrap_servers)


def server_properties(settings: Settings) -> str:
    host, port = listener_address(settings)
    cport = settings.kafka.controller_port
    parts = settings.kafka.partitions
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir(settings)),
        # Small box: few threads, one replica of everything.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "num.partitions": str(parts),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": "60000",
        "delete.topic.enable": "true",
    }
    lines = ["# Written by ops.infra.kafka_broker; regenerated on every start."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def log4j2_properties(settings: Settings) -> str:
    logfile = settings.run_path / "logs" / "kafka-server.log"
    return f"""# Written by ops.infra.kafka_broker.
status = warn
name = pz-kafka
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logfile}
appender.file.filePattern = {logfile}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.controller.name = kafka.controller
logger.controller.level = info
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
"""


def _classpath(settings: Settings) -> str:
    jar_dir = ensure_jars(settings).kafka_dir
    return f"{jar_dir}/*"


def _java_cmd(settings: Settings, main_class: str, *args: str) -> list[str]:
    return [
        java_executable(),
        *HEAP_OPTS,
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={log4j_file(settings)}",
        f"-Dkafka.logs.dir={settings.run_path / 'logs'}",
        "-cp",
        _classpath(settings),
        main_class,
        *args,
    ]


def _write_configs(settings: Settings) -> None:
    kafka_dir(settings).mkdir(parents=True, exist_ok=True)
    (settings.run_path / "logs").mkdir(parents=True, exist_ok=True)
    config_file(settings).write_text(server_properties(settings))
    log4j_file(settings).write_text(log4j2_properties(settings))


def format_storage(settings: Settings) -> bool:
    """Format the KRaft log dir once (fixed cluster id). True if it formatted now."""
    if (data_dir(settings) / "meta.properties").exists():
        return False
    cmd = _java_cmd(
        settings,
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        CLUSTER_ID,
        "--config",
        str(config_file(settings)),
        "--ignore-formatted",
    )
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=java_env(), timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"kafka storage format failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    log.info("formatted kafka storage in %s (cluster id %s)", data_dir(settings), CLUSTER_ID)
    return True


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "socket.connection.setup.timeout.ms": 2000,
            # Quiet while polling a broker that is still starting.
            "log_level": 2,
        }
    )


def healthy(settings: Settings, timeout_s: float = 2.0) -> bool:
    """True if an AdminClient can fetch cluster metadata (list topics) with a broker."""
    try:
        md = _admin(settings).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(md.brokers)


# The item-factor feed is kept by size: its records' timestamps are the item events'
# times (they are its watermarks), far in the past when old events are replayed, and
# time-based retention would delete them at once. A partition keeps its newest
# FEED_RETENTION_BYTES (the job holds each item's latest factors in broadcast state).
FEED_RETENTION_BYTES = 256 * 1024 * 1024
FEED_SEGMENT_BYTES = 32 * 1024 * 1024


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Per-topic settings ``ensure_topics`` applies beside the broker's defaults.

    The job's output topics take the broker's append time as their record timestamps:
    Flink stamps a main-output record with its event time, and a replay of events
    older than the retention (the tests, backfills) would otherwise be deleted by the
    next retention check while consumers still read it. The feed keeps event time
    (its watermarks) and is retained by size.

    Every other topic has a time retention from ``KafkaSettings`` (README "Privacy and
    security"): input events, triggers and the feature changelog ``retention_ms``; dead
    letters (raw payloads, raw ids) ``dlq_retention_ms``, the shortest; exposures and A/B
    outcomes ``ab_retention_ms``; the privacy audit trail ``audit_retention_ms``, the
    longest. A segment is deleted once its newest record is older than that (checked
    every ``log.retention.check.interval.ms``)."""
    k = settings.kafka
    retention = {topic: k.retention_ms for topic in (*k.event_topics, k.triggers_topic)}
    retention[k.feature_updates_topic] = k.retention_ms
    # Undelivered triggers (pseudonyms, like triggers) wait as long as the triggers do.
    retention[k.triggers_dlq_topic] = k.retention_ms
    retention[k.dlq_topic] = k.dlq_retention_ms
    retention[k.exposures_topic] = k.ab_retention_ms
    retention[k.ab_outcomes_topic] = k.ab_retention_ms
    retention[k.audit_topic] = k.audit_retention_ms
    configs = {topic: {"retention.ms": str(ms)} for topic, ms in retention.items()}
    for topic in (k.triggers_topic, k.dlq_topic, k.feature_updates_topic, k.ab_outcomes_topic):
        configs[topic]["message.timestamp.type"] = "LogAppendTime"
    # The catalog is state, not a stream: compacted by item id, the latest record of
    # every item is kept, so a new online store can be rebuilt from the topic.
    configs[k.catalog_topic] = {"cleanup.policy": "compact"}
    configs[k.item_factors_topic] = {
        "message.timestamp.type": "CreateTime",
        "retention.ms": "-1",
        "retention.bytes": str(FEED_RETENTION_BYTES),
        "segment.bytes": str(FEED_SEGMENT_BYTES),
    }
    return configs


def _apply_topic_configs(
    admin: AdminClient, configs: dict[str, dict[str, str]], timeout_s: float
) -> None:
    """Set ``configs`` on existing topics (a run dir from before a setting existed)."""
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                for name, value in entries.items()
            ],
        )
        for topic, entries in configs.items()
    ]
    for fut in admin.incremental_alter_configs(resources, request_timeout=timeout_s).values():
        fut.result()


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every ``settings.kafka.all_topics`` topic that is missing, with
    ``settings.kafka.partitions`` partitions (existing topics with fewer get more) and
    :func:`topic_configs` (set on existing topics too).
    Returns the topics created. Idempotent.

    Growing a topic (a run dir from when the default was 2) moves keys to other
    partitions for records produced from then on; the job orders by event time
    (watermarks), and a running job's Kafka source finds the new partitions by its
    periodic discovery, a restarted one at once. Partitions are never shrunk."""
    k = settings.kafka
    admin = _admin(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [t for t in k.all_topics if t not in existing]
    configs = topic_configs(settings)
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(t, k.partitions, replication_factor=1, config=configs.get(t, {}))
                for t in missing
            ],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for topic, fut in futures.items():
            try:
                fut.result()
                created.append(topic)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
    grow = [t for t in k.all_topics if t in existing and len(existing[t].partitions) < k.partitions]
    if grow:
        for fut in admin.create_partitions(
            [NewPartitions(t, k.partitions) for t in grow], request_timeout=timeout_s
        ).values():
            fut.result()

    def all_have_leaders() -> bool:
        topics = admin.list_topics(timeout=5).topics
        for t in k.all_topics:
            meta = topics.get(t)
            if meta is None or meta.error is not None or len(meta.partitions) < k.partitions:
                return False
            if any(p.leader < 0 for p in meta.partitions.values()):
                return False
        return True

    wait_until(all_have_leaders, timeout_s, interval_s=0.2, what="topic leaders")
    present = {t: c for t, c in configs.items() if t in existing}
    if present:
        _apply_topic_configs(admin, present, timeout_s)
    if created:
        log.info("created kafka topics: %s", ", ".join(created))
    return created


def _prepare(settings: Settings) -> Launch:
    _write_configs(settings)
    format_storage(settings)
    return Launch(
        _java_cmd(settings, "kafka.Kafka", str(config_file(settings))),
        cwd=kafka_dir(settings),
        env=java_env(),
    )


def _ports(settings: Settings) -> tuple[int, ...]:
    return listener_address(settings)[1], settings.kafka.controller_port


KAFKA = ProcessService(
    name="kafka",
    process=process,
    endpoint=listener_address,
    ports=_ports,
    data_dir=data_dir,
    healthy=healthy,
    healthy_text="metadata ok",
    prepare=_prepare,
    busy_hint="; stop it or change PZ_KAFKA__BOOTSTRAP_SERVERS / PZ_KAFKA__CONTROLLER_PORT.",
    start_timeout_s=START_TIMEOUT_S,
    # Controlled shutdown (SIGTERM) moves leadership and flushes logs: give it time.
    stop_timeout_s=30.0,
    poll_interval_s=0.5,
    # Ready for the pipeline: every topic there, each partition with a leader.
    ready=ensure_topics,
)

# The calls the benchmarks and tests make on the module: ``start`` is the broker alone
# (they create topics themselves, or restart a broker whose topics exist);
# ``KAFKA.start`` also runs :func:`ensure_topics`.
start = KAFKA.start_process
stop = KAFKA.stop
