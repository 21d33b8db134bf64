"""RedisSettings' cluster form: the node list from the environment, Feast's connection
string and redis_type, and the client kind built from them (pure: nothing connects)."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError

from personalization import feature_store as fs
from personalization.redis_client import redis_client
from personalization.settings import RedisSettings, Settings

NODES = ("10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002")


def test_single_node_stays_the_default() -> None:
    cfg = RedisSettings()
    assert cfg.cluster_nodes == () and not cfg.is_cluster
    assert cfg.redis_type == "redis"
    assert cfg.connection_string == "127.0.0.1:6379,db=0"
    assert RedisSettings(password="s3").connection_string == "127.0.0.1:6379,db=0,password=s3"


@pytest.mark.parametrize(
    "raw",
    [
        "10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002",
        " 10.0.0.1:7000 , 10.0.0.2:7001,10.0.0.3:7002, ",
        '["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"]',
    ],
)
def test_cluster_nodes_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("PZ_REDIS__CLUSTER_NODES", raw)
    settings = Settings()
    assert settings.redis.cluster_nodes == NODES
    assert settings.redis.startup_nodes == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
        ("10.0.0.3", 7002),
    ]
    # Shipped to the Flink job / the launched processes as JSON: the same nodes come back.
    assert Settings.model_validate_json(settings.model_dump_json()).redis == settings.redis


def test_empty_environment_value_means_single_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PZ_REDIS__CLUSTER_NODES", "")
    assert Settings().redis.cluster_nodes == ()


def test_cluster_connection_string_is_what_feast_redis_cluster_parses() -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    cfg = RedisSettings(cluster_nodes=NODES, password="pw")
    assert cfg.redis_type == "redis_cluster"
    assert cfg.connection_string == "10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002,password=pw"
    startup, params = RedisOnlineStore._parse_connection_string(cfg.connection_string)
    assert [(n["host"], int(n["port"])) for n in startup] == cfg.startup_nodes
    assert params == {"password": "pw"}  # no db=: RedisCluster refuses one


def test_feast_env_and_repo_config_switch_redis_type(tmp_path) -> None:
    single = Settings(run_dir=str(tmp_path))
    assert single.feast_env()["PZ_REDIS_TYPE"] == "redis"
    assert fs.repo_config(single).online_store.redis_type.value == "redis"
    cluster = Settings(run_dir=str(tmp_path), redis=RedisSettings(cluster_nodes=NODES))
    env = cluster.feast_env()
    assert env["PZ_REDIS_TYPE"] == "redis_cluster"
    assert env["PZ_REDIS_CONNECTION"] == ",".join(NODES)
    online = fs.repo_config(cluster).online_store
    assert online.redis_type.value == "redis_cluster"
    assert online.connection_string == ",".join(NODES)


@pytest.mark.parametrize(
    "nodes",
    [("10.0.0.1",), ("10.0.0.1:http",), (":7000",), ("10.0.0.1:70000",), ("a:1", "a:1")],
)
def test_malformed_nodes_are_refused(nodes: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError):
        RedisSettings(cluster_nodes=nodes)


def test_a_cluster_has_only_db_0() -> None:
    with pytest.raises(ValidationError, match="only db 0"):
        RedisSettings(cluster_nodes=NODES, db=2)


def test_single_node_client_without_cluster_nodes() -> None:
    client = redis_client(RedisSettings(port=1))  # nothing connects yet
    assert type(client) is redis.Redis
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.05
    client.close()


def test_cluster_client_with_cluster_nodes() -> None:
    # A RedisCluster (not a plain Redis on host:port) asks the nodes for the slot map at
    # construction: with none reachable it says so.
    cfg = RedisSettings(cluster_nodes=("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"))
    with pytest.raises(redis.exceptions.RedisClusterException, match="cannot be connected"):
        redis_client(cfg)
