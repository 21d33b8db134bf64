"""Every :class:`~ops.infra.service.Service` of the stack, by name, in start order.

A module of its own so that importing one service module (or ``ops.infra.processes``)
does not load the others' dependencies (pyflink, confluent_kafka).
"""

from __future__ import annotations

from ops.infra.flink_cluster import FLINK
from ops.infra.kafka_broker import KAFKA
from ops.infra.redis_cluster import REDIS_CLUSTER
from ops.infra.redis_server import REDIS
from ops.infra.service import Service

__all__ = ["SERVICES", "STACK_SERVICES", "select"]

# In start order (the Flink cluster last: its jobs read Kafka); stop in reverse.
SERVICES: dict[str, Service] = {s.name: s for s in (REDIS, REDIS_CLUSTER, KAFKA, FLINK)}
# What `personalize up` runs on, and what `personalize infra` acts on by default: the
# local pipeline runs its Flink job on a MiniCluster, so the standalone cluster is opt-in;
# so is the local Redis Cluster (ops/infra/redis_cluster.py, redis.cluster_nodes).
STACK_SERVICES: tuple[Service, ...] = (REDIS, KAFKA)


def select(name: str | None) -> tuple[Service, ...]:
    """``None`` -> :data:`STACK_SERVICES`, ``"all"`` -> every service, else that one."""
    if name is None:
        return STACK_SERVICES
    if name == "all":
        return tuple(SERVICES.values())
    return (SERVICES[name],)
