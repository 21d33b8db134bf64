"""Start, stop and probe the local stack: Redis, a KRaft Kafka broker, a standalone Flink
cluster, and the JVM jars they need.

Each of the three is a :class:`~ops.infra.service.Service` (``redis_server.REDIS``,
``kafka_broker.KAFKA``, ``flink_cluster.FLINK``; all of them in
:mod:`ops.infra.registry`), driven from the command line by
``personalize infra start|stop|status|reset [redis|kafka|flink|all]``.

Everything is driven by :class:`personalization.settings.Settings`; state (pidfiles, logs,
data, generated configs, jars) lives under ``settings.run_dir``:

```
<run_dir>/pids/<service>.pid   processes started here (redis, kafka)
<run_dir>/logs/<service>.log   their stdout/stderr (Kafka also writes server.log there)
<run_dir>/redis/               Redis data (AOF, appendfsync everysec)
<run_dir>/kafka/               KRaft metadata + log dirs, server.properties, log4j2
<run_dir>/flink-conf/          generated Flink config.yaml (+ log4j files)
<run_dir>/flink/               Flink logs, pid files, tmp dirs
<run_dir>/jars/                Maven-fetched jars (infra/pom.xml)
```

Each ``start`` is idempotent: a healthy service is left alone, a stale pidfile is
discarded.
"""
