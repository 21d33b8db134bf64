"""Typed settings for every component, overridable from the environment.

Every host, port, topic, path and tuning knob lives here. Override any field with an
environment variable: ``PZ_`` + section + ``__`` + field, for example
``PZ_REDIS__PORT=6380`` or ``PZ_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
Top-level fields drop the section: ``PZ_RUN_DIR=/var/lib/pz``.

The same object is handed to the Flink job as JSON (``Settings.model_dump_json``) so a
job submitted to a remote cluster sees exactly the configuration of the submitter.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None
    # Socket timeouts keep a dead Redis from hanging a request past its deadline.
    socket_timeout_s: float = 0.05
    connect_timeout_s: float = 0.05
    # Redis Cluster: "host:port" of some (or all) masters; empty = the single node at
    # host:port above (the default). PZ_REDIS__CLUSTER_NODES takes a comma-separated
    # list ("10.0.0.1:7000,10.0.0.2:7000") or a JSON array. With nodes set, every
    # client (personalization/redis_client.py) and Feast (redis_type: redis_cluster)
    # talk to the cluster; host, port and db are then unused (a cluster has only db 0).
    cluster_nodes: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("cluster_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cluster_nodes")
    @classmethod
    def _check_nodes(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        for node in nodes:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"cluster node {node!r}: expected host:port")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"cluster nodes listed twice: {list(nodes)}")
        return nodes

    @model_validator(mode="after")
    def _cluster_has_db_0(self) -> RedisSettings:
        if self.cluster_nodes and self.db != 0:
            raise ValueError("Redis Cluster has only db 0: unset db or cluster_nodes")
        return self

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``cluster_nodes`` as (host, port) pairs."""
        out = []
        for node in self.cluster_nodes:
            host, _, port = node.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    @property
    def redis_type(self) -> str:
        """Feast's ``online_store.redis_type``: ``redis_cluster`` or ``redis``."""
        return "redis_cluster" if self.cluster_nodes else "redis"

    @property
    def connection_string(self) -> str:
        """Feast's ``connection_string`` form: ``host:port,db=N[,password=...]``; for a
        cluster ``host1:port1,host2:port2,...[,password=...]`` (no db: Feast passes every
        parameter to ``RedisCluster``, which refuses one)."""
        parts = list(self.cluster_nodes) or [f"{self.host}:{self.port}", f"db={self.db}"]
        if self.password:
            parts.append(f"password={self.password}")
        return ",".join(parts)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    # KRaft controller listener of the local single-node broker (ops.infra).
    controller_port: int = 9093
    clickstream_topic: str = "clickstream"
    purchase_topic: str = "purchase_events"
    engagement_topic: str = "engagement_metrics"
    dlq_topic: str = "events_dlq"
    triggers_topic: str = "triggers"
    # Item metadata (JSON lines, keyed by item id, compacted): `personalize catalog
    # import` and Catalog.UpsertItems produce, the writer's catalog consumer applies.
    catalog_topic: str = "catalog"
    # Triggers the dispatcher could not deliver to a webhook, with the reason
    # (dispatcher/dead_letters.py).
    triggers_dlq_topic: str = "triggers_dlq"
    # Changelog of computed feature rows: the Flink job appends, the online-store
    # writer applies them to Feast's Redis store (see writer/process.py).
    feature_updates_topic: str = "feature_updates"
    # Privacy audit trail: one record per erasure / consent override.
    audit_topic: str = "privacy_audit"
    # A/B testing: one record per Recommend answer, and the job's joined outcomes.
    exposures_topic: str = "exposures"
    ab_outcomes_topic: str = "ab_outcomes"
    # The job's own loop: item CF factors from the item operator back to the user
    # operator (flink_jobs/item_factor_feed.py). Kept by size, not time: its timestamps
    # are event times (its watermarks); the job keeps the latest of each item in broadcast
    # state, checkpointed (ops.infra.kafka_broker.topic_configs).
    item_factors_topic: str = "item_factors"
    # Time-based retention of each topic (ops.infra.kafka_broker.topic_configs; README
    # "Privacy and security"), in ms. Input topics hold raw user ids and the changelog
    # replays into Redis, so they are kept only as long as a stopped job or writer may
    # need to catch up (retention_ms). Dead letters keep refused payloads, raw ids
    # included: shortest (dlq_retention_ms). Exposures and A/B outcomes (pseudonyms) live
    # an experiment's analysis window (ab_retention_ms). The privacy audit trail is kept
    # longest (audit_retention_ms; -1 = forever). item_factors is kept by size instead.
    retention_ms: int = Field(default=3 * 24 * 3600 * 1000, gt=0)
    dlq_retention_ms: int = Field(default=24 * 3600 * 1000, gt=0)
    ab_retention_ms: int = Field(default=30 * 24 * 3600 * 1000, gt=0)
    audit_retention_ms: int = Field(default=365 * 24 * 3600 * 1000, ge=-1)
    # Partitions of every pipeline topic: the most source subtasks that get work, so at
    # least the job's parallelism (flink.parallelism) and a multiple of it; 4 covers
    # parallelism 1, 2 and 4. Existing topics with fewer are grown (ops.infra.kafka_broker).
    partitions: int = Field(default=4, ge=1)
    flink_consumer_group: str = "pz-user-features"
    # What the job's Kafka sources fetch from one partition at a time. The behaviour
    # events' watermark is per partition (flink_jobs/event_source.py); the exposures'
    # and the catalog's are taken after parsing, over all partitions, so there a long
    # run of one partition moves the watermark up to that run's span of event time past
    # the others' records. 64 KB is ~300 events a run (1 MB, Kafka's default, ~5,000).
    source_max_partition_fetch_bytes: int = Field(default=65_536, ge=1024)
    writer_consumer_group: str = "pz-online-store-writer"
    # A consumer of ours (writer, catalog, dispatcher, identity directory) whose group
    # membership has not been steady this long is replaced by a new member: librdkafka
    # can leave a group for good after a broker restart (personalization/group_consumer.py).
    # 0 never replaces.
    group_stall_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _retention_order(self) -> KafkaSettings:
        if self.dlq_retention_ms > min(self.retention_ms, self.ab_retention_ms):
            raise ValueError("dlq_retention_ms must be the shortest topic retention")
        if self.audit_retention_ms == 0 or (
            self.audit_retention_ms > 0
            and self.audit_retention_ms < max(self.retention_ms, self.ab_retention_ms)
        ):
            raise ValueError("audit_retention_ms must be the longest topic retention (or -1)")
        return self

    @property
    def event_topics(self) -> tuple[str, str, str]:
        return (self.clickstream_topic, self.purchase_topic, self.engagement_topic)

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (
            *self.event_topics,
            self.dlq_topic,
            self.triggers_topic,
            self.catalog_topic,
            self.triggers_dlq_topic,
            self.feature_updates_topic,
            self.audit_topic,
            self.exposures_topic,
            self.ab_outcomes_topic,
            self.item_factors_topic,
        )


class FlinkSettings(_Section):
    # 1: `personalize up` runs the job on a local MiniCluster. N > 1: on the local
    # standalone cluster with N TaskManagers of one slot each (thread mode shares one
    # Python interpreter between the slots of a TaskManager). PZ_FLINK__PARALLELISM.
    parallelism: int = Field(default=1, ge=1)
    # The item side of the job (item operator, A/B attribution, propensity learner) in a
    # slot sharing group of its own, so it runs in TaskManager processes apart from the
    # user side: in thread mode the Python operators of one TaskManager share one
    # interpreter, and the user and item operators handing its GIL back and forth left
    # each waiting on the run queue ~40 % of the time (README "Figures"). On: the local
    # standalone cluster, 2 x parallelism TaskManagers of one slot (also at parallelism
    # 1, instead of the MiniCluster). PZ_FLINK__SEPARATE_ITEM_SIDE.
    separate_item_side: bool = False
    # Key groups: the most a savepoint can ever be rescaled to. Explicit, because a
    # changed maximum makes every keyed state unrestorable. 128 is what Flink derives
    # for parallelism <= 85, so checkpoints taken before it was set still restore.
    max_parallelism: int = Field(default=128, ge=1, le=32768)
    # Thread mode runs Python inside the JVM; process mode is ~15x slower here.
    execution_mode: str = "thread"
    checkpoint_interval_ms: int = 2000
    # Heap of the local job's JVM (the MiniCluster that `personalize job` / `up` runs):
    # fixed, so G1 cannot grow it towards a quarter of RAM when starved of CPU (the
    # soak saw 148 MB -> 1.7 GB committed with under 200 MB used). 0 = JVM default.
    local_jvm_heap_mb: int = 1024
    # Empty = <run_dir>/checkpoints.
    checkpoint_dir: str = ""
    # Below 100 days: the events table declares it as a DAY(2) interval.
    out_of_orderness_ms: int = Field(default=5_000, ge=0, lt=100 * 86_400_000)
    # A partition with no traffic for this long stops holding back the watermark.
    source_idleness_ms: int = 5_000
    # Starting offsets when no checkpoint/committed offsets exist: earliest | latest.
    starting_offsets: str = "earliest"
    # Keys whose deserialized state each keyed operator subtask keeps in its read cache
    # (flink_jobs/state_cache.py): a hit saves a call into the JVM and an unpickling per
    # read; writes always go through. ~7 KB of Python objects per user, ~5 KB per item.
    # 0 turns the cache off.
    state_cache_entries: int = Field(default=4096, ge=0)
    # Bundle knobs trade latency for throughput of the Python operators.
    bundle_size: int = 1000
    bundle_time_ms: int = 20
    # Network buffers between operators flush at least this often (Flink default 100 ms,
    # paid once per shuffle: source -> user -> item -> sink).
    buffer_timeout_ms: int = 10
    # Unaligned checkpoints: barriers overtake in-flight records, so a checkpoint never
    # stalls the stream while an input catches up (freshness stays flat across them).
    unaligned_checkpoints: bool = True
    # Empty = the jar fetched by infra/pom.xml into <run_dir>/jars/flink.
    kafka_connector_jar: str = ""
    job_name: str = "pz-user-features"
    # Kafka transactions of the exactly-once sinks (triggers, DLQ); must exceed the
    # checkpoint interval plus any downtime and stay below the broker's maximum (15 min).
    transaction_timeout_ms: int = 600_000
    # A broker restarted with several of a producer's batches appended but unacknowledged
    # remembers only the last one, so the producer's retries of the earlier ones are
    # refused (OUT_OF_ORDER_SEQUENCE_NUMBER) until its delivery timeout: CI saw the
    # item-factor sink stuck for Kafka's default two minutes, no checkpoint completing.
    # The job's sinks give up a send after sink_delivery_timeout_ms, which fails the task,
    # and Flink restarts from the last checkpoint (exactly-once sinks abort; the changelog
    # is idempotent). One request in flight (1) would avoid the refusal altogether, but
    # serialises every request and every checkpoint's flush on the broker's round trip
    # (the one CI run with it lagged minutes behind; cause not established). Kafka's 5.
    sink_max_in_flight_requests: int = Field(default=5, ge=1, le=5)
    sink_request_timeout_ms: int = Field(default=10_000, ge=1_000)
    sink_delivery_timeout_ms: int = Field(default=30_000, ge=2_000)
    # How long a sink's producer waits to fill a batch (Kafka's linger.ms). Per request,
    # not per record, is where the producer's, the broker's and the consumers' CPU goes
    # at these rates: 50 ms against 5 measured less CPU in the job and Kafka and fresher
    # rows at 1,000 events/s, on a machine whose cores the pipeline fills (README,
    # "Kafka sinks linger"). Each record may wait that long before it is sent.
    sink_linger_ms: int = Field(default=50, ge=0, le=1_000)
    # Local standalone cluster (ops.infra.flink_cluster): REST API/web UI and
    # JobManager RPC ports, both bound to 127.0.0.1.
    rest_port: int = 8081
    rpc_port: int = 6123

    @property
    def taskmanagers(self) -> int:
        """TaskManagers (one slot each) the job needs on the local standalone cluster."""
        return self.parallelism * (2 if self.separate_item_side else 1)

    @property
    def on_local_cluster(self) -> bool:
        """Whether the job runs on the standalone cluster rather than a MiniCluster (one
        JVM, one interpreter): more than one TaskManager process wanted."""
        return self.taskmanagers > 1


class TriggerSettings(_Section):
    """Trigger rules (YAML; format in personalization/trigger_rules.py, README "Trigger
    rules"). Nested in FeatureSettings (PZ_FEATURES__TRIGGERS__RULES_FILE) because the
    job's per-user step receives those settings: no new plumbing through the job."""

    # Empty = personalization/default_triggers.yaml (browse_intent, cart_abandoned,
    # quick_exit). Read once when the job starts.
    rules_file: str = ""
    # The file's text as read at job start (flink_jobs.triggers.with_rules_loaded): it
    # travels with the settings, so TaskManagers need no copy of the file. Wins over
    # rules_file when set.
    rules_yaml: str = ""

    @property
    def rules_path(self) -> Path:
        return Path(self.rules_file or PROJECT_ROOT / "personalization" / "default_triggers.yaml")


class ContextSettings(_Section):
    """Popularity per request context (country, device) beside global trending
    (flink_jobs/context_popularity.py in the job, serving/context_trending.py in serving;
    README "Context")."""

    # Context values (country, device, country+device) kept per item: its strongest by
    # decayed popularity, decayed like trending (features.trending_half_life_s).
    max_per_item: int = Field(default=8, ge=0, le=64)
    # Serving uses a context's own trending list once at least min_items catalogued items
    # carry popularity in it summing to at least min_weight (a view weighs 1, a purchase
    # 5, decayed); a thinner context falls back to a broader one, then to global.
    min_items: int = Field(default=3, ge=1)
    min_weight: float = Field(default=5.0, ge=0)


class FeatureSettings(_Section):
    """Definitions of the online features and behavioural triggers."""

    session_gap_s: int = 30 * 60
    interest_half_life_s: float = 24 * 3600.0
    max_interest_categories: int = 20
    recent_items: int = 20
    max_cart_items: int = 50
    max_purchased_items: int = 200
    # Event ids remembered per user to drop redelivered duplicates.
    dedup_horizon_s: int = 24 * 3600
    dedup_max_ids: int = 256
    # Events too far from the wall clock are rejected (clock bugs, replays of junk).
    max_future_skew_s: int = 24 * 3600
    max_event_age_s: int = 100 * 365 * 24 * 3600
    max_event_bytes: int = 64 * 1024
    # The rules that fire triggers (their windows and thresholds are in the rule file).
    triggers: TriggerSettings = TriggerSettings()
    # Popularity per country / device (items) and its use by serving.
    context: ContextSettings = ContextSettings()
    # Item popularity (trending) decays with this half-life.
    trending_half_life_s: float = 6 * 3600.0
    # The item operator writes an item's rows (item_stats, item_cf) at most once per this
    # much processing time, on a timer, with the item's state at that moment: a popular
    # item seen 50 times in the interval is rendered once, not 50 times. 0: a row per
    # event. Serving reads item rows every serving.catalog_refresh_s (2 s) anyway.
    item_rows_every_ms: int = Field(default=1000, ge=0)
    # The user operator likewise, for a user's rows (user_profile, user_cf), with a
    # leading edge: a user with no row in the last interval gets one at once, further
    # events in the interval one row at its end. Rendering the profile costs more than
    # folding an event into it, and a replayed backlog sends a user's events in bursts
    # (1.23x events/s on the MovieLens replay at 100 ms); a live user rarely sends two
    # events within 100 ms, so live traffic gains little. The price: the
    # feature history then holds a burst's last state, not the state after each of its
    # events, so point-in-time training rows inside a burst see an earlier row. Hence
    # off by default (0: a row per event); set it (e.g. 100) when the history is off or
    # that granularity is enough.
    user_rows_every_ms: int = Field(default=0, ge=0)
    # A/B attribution: outcomes count within this long after the exposure; outcomes
    # whose exposure never arrives are dropped this long after the last of them.
    attribution_window_s: int = 30 * 60
    attribution_wait_for_exposure_s: int = 5 * 60
    # Impressions (items shown by Recommend) counted per user over this window, for
    # frequency capping and fatigue (flink_jobs/impressions.py); items / categories
    # tracked per user, most recently shown kept.
    impression_window_s: int = 24 * 3600
    max_impression_items: int = 100
    max_impression_categories: int = 30


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 50051
    # Threads for the calls that block (Collect waits for Kafka acks, Admin and
    # GetUserProfile for their audit records); Recommend runs on the asyncio event loop.
    max_workers: int = 16
    # Serving processes sharing `port` (SO_REUSEPORT), forked by `python -m serving.server`
    # (serving/workers.py); each has its own catalog and its metrics endpoint on
    # metrics.serving_port + its index (Settings.serving_metrics_ports).
    workers: int = Field(default=1, ge=1)
    catalog_refresh_s: float = 2.0
    catalog_size: int = 20_000
    default_k: int = 10
    max_k: int = 100
    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_events: int = 1000
    collect_ack_timeout_s: float = 5.0
    # Producer batching delay for Collect; small, because the call waits for the acks.
    collect_linger_ms: int = 2
    client_deadline_s: float = 1.0
    # Request-path Redis reads: after this many failures in a row, stop reading (serve
    # fallbacks at once) for store_breaker_open_s, then let one read probe Redis.
    store_breaker_failures: int = 3
    store_breaker_open_s: float = 0.5
    # A/B experiments (YAML, see personalization/experiments.py); missing file = none.
    experiments_file: str = ""
    # TLS: PEM files of the server certificate chain and key; empty = plaintext.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Mutual TLS: a PEM file of the CA certificates whose client certificates are
    # accepted; set, every client must present one (needs tls_cert_file). Empty = none.
    tls_client_ca_file: str = ""
    # Access control (personalization/access.py, README "Access control"): a JSON file of
    # API key hashes and their scopes, managed with `personalize keys`. Empty = every RPC
    # is open, as without it. The file is re-read when it changes (looked at every
    # api_keys_reload_s), so keys rotate without a restart.
    api_keys_file: str = ""
    api_keys_reload_s: float = Field(default=1.0, gt=0)
    # With access control on, server reflection needs a key too (any scope).
    reflection_requires_key: bool = False
    # How often serving checks the model registry for a new active version.
    model_refresh_s: float = 1.0
    # In-flight RPCs get this long to finish on shutdown (SIGTERM).
    shutdown_grace_s: float = 5.0
    # Catalog refresh re-reads index entries this far below its high-water mark, so
    # rows written slightly out of order by the online-store writer are not missed;
    # a full re-read every catalog_full_resync_s catches anything later than that.
    catalog_index_overlap_s: float = 60.0
    catalog_full_resync_s: float = 300.0
    catalog_fetch_batch: int = 1000
    # The refresh reads through a client of its own with this socket timeout, not the
    # request path's redis.socket_timeout_s: a page of catalog_fetch_batch item rows is
    # megabytes, and under load it outlasts 50 ms every time, so a new server would never
    # finish its first full read. The refresh runs in the background; waiting costs no
    # request anything. The propensity model watcher's polls use the same timeout.
    catalog_read_timeout_s: float = Field(default=5.0, gt=0)
    # The background refresh rests catalog_refresh_rest_ms after every
    # catalog_refresh_work_ms of work, so Recommend (on the event loop) waits at most
    # about that long for the GIL while a refresh runs (serving/pacing.py). 0 rest = the
    # refresh runs flat out.
    catalog_refresh_work_ms: float = Field(default=1.0, gt=0)
    catalog_refresh_rest_ms: float = Field(default=3.0, ge=0)
    # The catalog's CF factors and co-visitation lists are rebuilt at most this often
    # by a refresh that moves no item (one that adds, drops or re-categorises an item
    # rebuilds them at once): building them is most of a busy catalog's refresh, and
    # they change meaning slowly. 0 = with every refresh.
    catalog_models_refresh_s: float = Field(default=10.0, ge=0)
    # Ranking blend ("blend_v1"): weight of the user's category interest vs trending.
    interest_weight: float = 1.0
    trending_weight: float = 0.3


class PrivacySettings(_Section):
    # Empty = user ids are stored as given; set it to store HMAC pseudonyms instead.
    hmac_secret: str = ""
    # Consent of a user never seen to state it (opt-out model by default).
    default_consent: str = "granted"
    # An erased user's store entry keeps only a tombstone (so replayed older rows cannot
    # resurrect it) for this long; longer than the feature_updates topic retention.
    erasure_tombstone_ttl_s: int = 14 * 24 * 3600
    # Users inactive this long are forgotten: every online-store write sets this TTL on
    # the entity's Redis hash (refreshed by each write; model registry keys never expire),
    # and the job drops the keyed state of users idle this long. 0 = keep forever.
    retention_days: int = Field(default=90, ge=0)
    # Bearer token for admin RPCs (forget, consent override, model version). Without
    # serving.api_keys_file it is the only way in (empty disables them); with it, keys
    # with the `admin` scope work too and this token still does (personalization/access.py).
    admin_token: str = ""


class HistorySettings(_Section):
    """Feature history: the writer appends every applied row to parquet files by view and
    date, the feature views' FileSources (personalization/offline_store.py, README
    "Feature history")."""

    enabled: bool = True
    # Empty = <run_dir>/history.
    dir: str = ""
    # A file per flush: whichever comes first. The writer commits its Kafka offsets only
    # after a flush, so a longer interval also delays the commit (replays are harmless).
    flush_rows: int = Field(default=50_000, gt=0)
    flush_interval_s: float = Field(default=5.0, gt=0)
    # `personalize history compact` drops date partitions older than this (0 = keep all).
    keep_days: int = Field(default=30, ge=0)


class SegmentSettings(_Section):
    """Rule segments from a YAML file and streaming clustering of user profiles
    (personalization/segments.py, flink_jobs/clustering.py, README "Segments")."""

    # Empty = personalization/segments.yaml (the seven default rules).
    rules_file: str = ""
    # Online k-means over interests + RFM; 0 clusters = off. Seeds are anchored: cluster
    # j starts on interest bucket j mod category_dims, RFM tier j div category_dims
    # (flink_jobs/clustering.py), so 16 over 8 buckets = a browser and a buyer seed each.
    clusters: int = Field(default=16, ge=0, le=64)
    # Category interests are hashed into this many dimensions of the profile vector.
    category_dims: int = Field(default=8, ge=1, le=256)
    # A user's vector is (re)assigned at a session end or every N events, never per event.
    update_every_events: int = Field(default=20, ge=1)
    # Step of a cell's centroid towards a vector in it: max(min_learning_rate, 1 / count),
    # a running mean that keeps following a drifting population.
    min_learning_rate: float = Field(default=0.01, gt=0, le=1)
    # Ranking by segment: segment (a rule segment's name or cluster:<id>) -> strategy
    # (ranking.strategy's choices) for its users when no experiment decides; the first
    # entry the user is in wins. PZ_SEGMENTS__STRATEGIES='{"loyal": "hybrid_v2"}'.
    strategies: dict[str, str] = Field(default_factory=dict)


class LearningSettings(_Section):
    """Online collaborative filtering and co-visitation (flink_jobs/learning.py,
    flink_jobs/covisitation.py). Defaults are the ones tuned on the MovieLens replay
    (``python -m bench.evaluate``)."""

    factors: int = 32
    learning_rate: float = 0.1
    l2: float = 0.01
    negatives: int = 4
    # "uniform" over known items, or "popularity" (recent positives).
    negative_sampling: str = "uniform"
    popularity_buffer: int = 10_000
    # "squared" (FunkMF-style, targets 1 / 0) or "bpr" (pairwise).
    loss: str = "squared"
    # Positive weight = min(weight, max_weight) ** weight_power (0 = all alike).
    weight_power: float = 0.0
    max_weight: float = 5.0
    init_std: float = 0.1
    seed: int = 42
    # Co-visitation: previous items linked per interaction, neighbours kept per item,
    # decay of the link weights, weight of the k-th previous item (decay**k), and the
    # largest gap in event time between linked interactions (0 = no limit).
    covisit_history: int = 5
    covisit_neighbors: int = 50
    covisit_half_life_s: float = 30 * 24 * 3600.0
    covisit_position_decay: float = 0.7
    covisit_max_gap_s: float = 0.0
    # Prequential quality of the CF model (flink_jobs/model_quality.py): every Nth
    # interaction is evaluated before it is learned (1 = all; evaluating costs more
    # than learning, see README "Figures").
    prequential_every: int = 4
    # Click propensity (flink_jobs/propensity.py): River logistic regression on the
    # features serving logged for each shown item, labelled this long (event time)
    # after the exposure; a version is published every N examples.
    propensity_learning_rate: float = 0.05
    propensity_l2: float = 0.0
    propensity_label_window_s: int = 5 * 60
    propensity_publish_every: int = 500
    # The learned blend's head in the offline replay (analysis/blend_learner.py): the
    # same learner, refreshed every N tested events. With blend_warp_tries 0 it learns
    # per event the chosen item against N negatives drawn at random from the catalog
    # (and, when set, the shown items and N drawn from each source's best `pool`
    # candidates). Hard negatives are off by default: contrasting the chosen item with
    # the head's own top 10 or the sources' top lists teaches "a source's top candidate
    # is bad" (the chosen item is mostly outside them) and the head ranked at half of
    # hybrid_v1 (HitRate@10 0.050 vs 0.118, first 6,000 MovieLens 100K events); random
    # negatives alone 0.124.
    blend_refresh_every: int = 100
    blend_shown_negatives: bool = False
    blend_source_negatives: int = 0
    blend_source_pool: int = 10
    blend_random_negatives: int = 5
    # Warm start: the head's learner starts from the strategy's prior weights
    # (ranking.strategies["learned_v1"] as weights of the src_ features) rather than
    # from zero, so its first versions rank like that blend instead of like noise.
    blend_warm_start: bool = True
    # The rule: WARP (blend_warp_tries > 0) learns one pair per event, the chosen item
    # against the first random item (of at most N draws) the head ranks above it or
    # within blend_warp_margin (log-odds) of it, weighted by L(rank), the harmonic
    # number of the rank estimated from the draws: pairs the head already gets right
    # by a margin teach nothing, and the margin keeps the weights' scale (violators
    # alone shrink them to 0). Picked on the first 6,000 MovieLens 100K events (0.125;
    # margins 0.5-2 and 10-50 draws within 0.002); on MovieLens latest (20k) it keeps
    # the popular items' weight lower than random negatives (0.231 vs 0.212).
    blend_warp_tries: int = 50
    blend_warp_margin: float = 1.0
    # The head learner's SGD step (the propensity model's is propensity_learning_rate):
    # WARP's L(rank) weights up to ~8 make 0.05 too coarse (the random-negative figures
    # above are at 0.05).
    blend_learning_rate: float = 0.01
    # The gate (a choice between two whole blends by online hit rate): at each refresh
    # the learnt weights become the head only if their prequential HitRate@k over the
    # last N tested events is at least the prior's, else the head is the prior (0: no
    # gate). The learnt head is not better everywhere nor all the time (MovieLens
    # latest: below hybrid_v1 early on); the gate keeps the better one as they move.
    blend_gate_window: int = 2000
    # Keyed learners the propensity model is trained by (examples spread by rec id, the
    # registry publishes their example-weighted average): its parallelism, up to this.
    propensity_shards: int = Field(default=4, ge=1, le=128)
    # Versions kept per model in the registry (personalization/model_registry.py).
    registry_keep_versions: int = 50


# The learned blend's name (serving/strategies.py LearnedStrategy): its entry in
# ``RankingSettings.strategies`` is the prior its learned head must beat.
LEARNED_BLEND = "learned_v1"


def _default_strategies() -> dict[str, dict[str, float]]:
    # blend_v1 takes its weights from ServingSettings.interest_weight / trending_weight.
    return {
        "hybrid_v1": {
            "cf": 0.3,
            "covisitation": 1.0,
            "interest": 0.1,
            "trending": 0.1,
            "content": 0.05,
        },
        # hybrid_v1 plus the learned click propensity (serving/propensity.py); without
        # a published model it ranks exactly like hybrid_v1.
        "hybrid_v2": {
            "cf": 0.3,
            "covisitation": 1.0,
            "interest": 0.1,
            "trending": 0.1,
            "content": 0.05,
            "propensity": 0.3,
        },
        # The learned blend (serving/strategies.py LearnedStrategy): these are only its
        # prior, the weights of the sources' scores until a learned head exists.
        LEARNED_BLEND: {
            "cf": 0.3,
            "covisitation": 1.0,
            "interest": 0.1,
            "trending": 0.1,
            "content": 0.05,
            "session": 0.0,
        },
    }


class RankingSettings(_Section):
    """Which ranking strategy serves, its blend weights per source, and the rules."""

    # A key of ``strategies``, or "blend_v1" (interest x popularity + trending: the simple
    # option, no learned model). The default is the learned blend: its replay beats
    # blend_v1 on every dataset in ../shared (README "Recommendation quality"); in
    # serving it ranks with its prior until the job's head beats that prior online.
    strategy: str = LEARNED_BLEND
    # strategy -> candidate source (cf, covisitation, interest, trending, content) ->
    # weight of that source's normalised (0..1) score in the blend.
    strategies: dict[str, dict[str, float]] = Field(default_factory=_default_strategies)
    # The user's last N recent items are not recommended again ("just seen").
    exclude_recent: int = 3
    # At most ceil(k * share) items per category (soft: relaxed if k cannot be filled).
    category_cap_share: float = 0.5
    # Share of the k slots given to exploration picks (deterministic per request seed).
    exploration_share: float = 0.1
    # Exploration draws from the candidates ranked k .. k * exploration_pool_factor.
    exploration_pool_factor: int = 5
    # Weight of the user's k-th most recent item for co-visitation/content (decay**k).
    recency_decay: float = 0.7
    # How many recent items seed co-visitation and content candidates.
    anchor_items: int = 5
    # CF's scores for a user with n events are scaled by min(1, n / N): the factors of a
    # user seen once or twice are mostly their random start, and max-normalised they
    # would still give some item the source's full score (on one-visit traffic such as
    # the Taobao sample hybrid_v1 ranked by that noise: HitRate@10 0.0008). 0: off.
    cf_confidence_events: int = Field(default=5, ge=0)
    # The learned blend ranks with the job's published head only once the head has
    # ordered the shown slates' (clicked, not clicked) pairs at least as well as the
    # prior blend over at least this many recent pairs (the job's gate,
    # flink_jobs/propensity.Trainer.judge_slate); until then it ranks with the prior.
    learned_head_min_pairs: int = Field(default=200, ge=0)
    # Frequency cap: an item shown this many times to the user within
    # features.impression_window_s is not recommended again (0 = no cap; soft: capped
    # items only fill a list that cannot be filled otherwise).
    max_item_impressions: int = 3
    # Fatigue: an item's score is multiplied by item_fatigue ** (times shown), and by
    # category_fatigue ** (times its category was shown beyond category_fatigue_free).
    item_fatigue: float = 0.8
    category_fatigue: float = 0.95
    category_fatigue_free: int = 10


class PrioritySettings(_Section):
    """CPU priority (``nice``, 0-19) of the processes the local stack starts.

    On one machine the stream job, the writer and the gRPC server share the cores. Serving
    answers in milliseconds and is what callers wait for; the job and the writer work
    through a queue and only need their share over a second. Running them at a lower
    priority lets the kernel give serving the core the moment a request arrives instead
    of after the job's time slice: on 2 cores at 300 Recommend/s and 1,000 events/s the
    difference is the whole of serving's p99 (README "Figures", ``bench stack``). Redis
    and Kafka stay at 0: serving reads Redis on every request. 0 = the caller's own."""

    job: int = Field(default=10, ge=0, le=19)
    writer: int = Field(default=5, ge=0, le=19)
    dispatcher: int = Field(default=5, ge=0, le=19)
    dashboard: int = Field(default=10, ge=0, le=19)
    serving: int = Field(default=0, ge=0, le=19)


class MetricsSettings(_Section):
    """Prometheus endpoints of the job, the writer and serving, and the live dashboard.

    Each process serves ``http://<host>:<port>/metrics``; a port of 0 turns that
    endpoint off (the dashboard then shows it as absent).
    """

    host: str = "127.0.0.1"
    job_port: int = 9464
    # On the local standalone cluster (N TaskManagers, ops/infra/flink_cluster.py) each
    # TaskManager's interpreter serves its own job metrics: TaskManager 0 on job_port,
    # TaskManager i > 0 on taskmanager_port_base + i - 1 (0 = only TaskManager 0 serves;
    # 9480 leaves 9466.. to serving's workers and 9470 to the trigger dispatcher).
    taskmanager_port_base: int = 9480
    writer_port: int = 9465
    serving_port: int = 9466
    dashboard_port: int = 8050
    # The dashboard scrapes every endpoint this often and keeps this much history.
    scrape_interval_s: float = 1.0
    history_s: float = 600.0
    # Percentiles are computed over histogram increments of this window; rates over
    # ``rate_window_s``.
    quantile_window_s: float = 10.0
    rate_window_s: float = 5.0

    def taskmanager_job_port(self, index: int) -> int:
        """The job-metrics port TaskManager ``index`` of the local cluster serves."""
        if index <= 0 or self.job_port <= 0:
            return self.job_port
        return self.taskmanager_port_base + index - 1 if self.taskmanager_port_base > 0 else 0


class WebhookSettings(_Section):
    """One HTTP endpoint the dispatcher POSTs triggers to (README "Trigger delivery").

    The signing secret is read from ``secret_file`` or the environment variable named by
    ``secret_env``, never given inline, so it stays off command lines and out of
    ``PZ_SETTINGS_JSON``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str = Field(pattern=r"^https?://")
    secret_file: str = ""
    secret_env: str = ""
    # Rule names delivered to this endpoint; empty = every rule.
    rules: tuple[str, ...] = ()
    timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    # Retry n waits a uniform random time in [0, min(backoff_max_s, backoff_base_s * 2**(n-1))].
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # Requests in flight to this endpoint at most.
    concurrency: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _one_secret_source(self) -> WebhookSettings:
        if bool(self.secret_file) == bool(self.secret_env):
            raise ValueError(f"webhook {self.name!r}: set exactly one of secret_file, secret_env")
        return self


class DispatcherSettings(_Section):
    """The trigger dispatcher (``python -m dispatcher``): webhooks, ``Triggers`` gRPC."""

    # A JSON list of WebhookSettings: PZ_DISPATCHER__WEBHOOKS='[{"name": ..., "url": ...}]'.
    webhooks: tuple[WebhookSettings, ...] = ()
    consumer_group: str = "pz-trigger-dispatcher"
    # Triggers taken from Kafka per batch; offsets are committed once all are settled.
    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    # The Triggers gRPC service (Subscribe, ResolveUser).
    host: str = "127.0.0.1"
    port: int = 50053
    max_subscribers: int = Field(default=16, ge=1)
    # Prometheus endpoint of the dispatcher; 0 = off.
    metrics_port: int = 9470
    # Deliver a consenting user's raw id instead of the pseudonym (needs identity_directory;
    # without privacy.hmac_secret ids are raw anyway).
    raw_user_ids: bool = False
    # Keep pseudonym -> raw id in Redis (from the event topics), for raw_user_ids and the
    # admin-scoped Triggers.ResolveUser. Off: no raw id is kept anywhere.
    identity_directory: bool = False
    identity_consumer_group: str = "pz-identity-directory"

    @model_validator(mode="after")
    def _raw_ids_need_the_directory(self) -> DispatcherSettings:
        if self.raw_user_ids and not self.identity_directory:
            raise ValueError("dispatcher.raw_user_ids needs dispatcher.identity_directory")
        names = [hook.name for hook in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be unique: {names}")
        return self


class CatalogSettings(_Section):
    """The item catalog: ingestion, availability, cold start, SimilarItems (README "Item
    catalog")."""

    # Consumer group of the writer's catalog consumer (writer/catalog.py).
    consumer_group: str = "pz-catalog-writer"
    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    # Items per Catalog.UpsertItems / DeleteItems call at most.
    max_batch_items: int = Field(default=1000, ge=1)
    # How long Catalog RPCs wait for Kafka to acknowledge the records.
    ack_timeout_s: float = Field(default=5.0, gt=0)
    # An item created this recently that no event has mentioned yet is "new": it gets a
    # content-based cold-start score (serving/cold_start.py).
    new_item_days: float = Field(default=14.0, gt=0)
    # Slots of a Recommend list at most that new items take (the last ones), and the
    # content match a new item needs with the user to take one (0..1).
    new_item_slots: int = Field(default=2, ge=0)
    new_item_min_score: float = Field(default=0.2, ge=0, le=1)
    # Weights of an item's content features in content similarity (weighted Jaccard):
    # the category path's levels, the brand, each free tag.
    category_weight: float = Field(default=1.0, ge=0)
    brand_weight: float = Field(default=1.0, ge=0)
    tag_weight: float = Field(default=0.5, ge=0)
    # SimilarItems: blend weights of co-visitation, content and CF neighbours.
    similar_covisitation_weight: float = Field(default=1.0, ge=0)
    similar_content_weight: float = Field(default=0.6, ge=0)
    similar_cf_weight: float = Field(default=0.4, ge=0)
    # SimilarItems: weight of the item's popularity in the request's context (country,
    # device) beside them, where the job has seen enough of that context; 0: ignored.
    similar_context_weight: float = Field(default=0.2, ge=0)


class FeastSettings(_Section):
    project: str = "personalization"
    # Empty = <project root>/feature_repo.
    repo_path: str = ""
    # Empty = <run_dir>/feast/registry.db.
    registry_path: str = ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PZ_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    run_dir: str = Field(default=str(PROJECT_ROOT / ".run"))
    # Shared, read-only datasets (Taobao, MovieLens). Read them in place; never copy
    # them into the repository (see <datasets_dir>/README.md for their terms).
    datasets_dir: str = Field(default=str(PROJECT_ROOT.parent / "shared" / "datasets"))
    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    flink: FlinkSettings = FlinkSettings()
    features: FeatureSettings = FeatureSettings()
    serving: ServingSettings = ServingSettings()
    feast: FeastSettings = FeastSettings()
    learning: LearningSettings = LearningSettings()
    ranking: RankingSettings = RankingSettings()
    privacy: PrivacySettings = PrivacySettings()
    history: HistorySettings = HistorySettings()
    segments: SegmentSettings = SegmentSettings()
    metrics: MetricsSettings = MetricsSettings()
    priority: PrioritySettings = PrioritySettings()
    catalog: CatalogSettings = CatalogSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()

    @model_validator(mode="after")
    def _tombstones_outlive_the_changelog(self) -> Settings:
        # A replayed changelog row older than an erasure must meet its tombstone.
        if self.privacy.erasure_tombstone_ttl_s * 1000 <= self.kafka.retention_ms:
            raise ValueError(
                "privacy.erasure_tombstone_ttl_s must be longer than kafka.retention_ms "
                "(the feature_updates changelog)"
            )
        return self

    @model_validator(mode="after")
    def _serving_metrics_ports_are_free(self) -> Settings:
        others = {self.metrics.job_port, self.metrics.writer_port, self.metrics.dashboard_port}
        taken = others.intersection(self.serving_metrics_ports)
        if taken:
            raise ValueError(
                f"metrics ports {sorted(taken)} are both another endpoint's and a serving "
                "worker's (metrics.serving_port + 0 .. serving.workers - 1)"
            )
        return self

    @property
    def serving_metrics_ports(self) -> list[int]:
        """The metrics port of each serving worker: ``metrics.serving_port`` + its index
        (none when the endpoint is off)."""
        base = self.metrics.serving_port
        return [base + i for i in range(self.serving.workers)] if base > 0 else []

    # --- derived paths -------------------------------------------------------------

    @cached_property
    def run_path(self) -> Path:
        return Path(self.run_dir).resolve()

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.flink.checkpoint_dir or self.run_path / "checkpoints").resolve()

    @property
    def jars_path(self) -> Path:
        return self.run_path / "jars"

    @property
    def kafka_connector_jar_path(self) -> Path:
        if self.flink.kafka_connector_jar:
            return Path(self.flink.kafka_connector_jar).resolve()
        return self.jars_path / "flink" / "flink-sql-connector-kafka.jar"

    @property
    def feature_repo_path(self) -> Path:
        return Path(self.feast.repo_path or PROJECT_ROOT / "feature_repo").resolve()

    @property
    def registry_file(self) -> Path:
        return Path(self.feast.registry_path or self.run_path / "feast" / "registry.db").resolve()

    @property
    def history_path(self) -> Path:
        """Root of the feature history (Feast's offline store)."""
        return Path(self.history.dir or self.run_path / "history").resolve()

    def feast_env(self) -> dict[str, str]:
        """Variables that ``feature_repo/feature_store.yaml`` expands."""
        return {
            "PZ_FEAST_PROJECT": self.feast.project,
            "PZ_FEAST_REGISTRY": str(self.registry_file),
            "PZ_REDIS_CONNECTION": self.redis.connection_string,
            "PZ_REDIS_TYPE": self.redis.redis_type,
            # feature_repo/features.py: the FileSources' folder (the feature history).
            "PZ_HISTORY_DIR": str(self.history_path),
        }


SETTINGS_JSON_ENV = "PZ_SETTINGS_JSON"


def load_settings() -> Settings:
    """Settings from the environment; ``PZ_SETTINGS_JSON`` (set by ``personalize up`` for
    the processes it starts) carries a launcher's resolved settings as a whole."""
    payload = os.environ.get(SETTINGS_JSON_ENV)
    if payload:
        return settings_from_json(payload)
    return Settings()


def settings_from_json(payload: str) -> Settings:
    """Rebuild settings shipped to a Flink job; the environment does not override them."""
    return Settings.model_validate_json(payload)
