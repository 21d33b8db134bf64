"""Feast glue shared by the writer, serving and tests.

- ``repo_config`` / ``feature_store``: a Feast ``FeatureStore`` built from the typed
  settings (no environment juggling).
- ``encode_row`` / ``decode_value``: Python values <-> Feast ``ValueProto`` with the
  dtypes declared in ``feature_repo/features.py``.
- ``redis_key`` / ``field_key``: Feast's own Redis layout (one hash per entity key,
  one field per murmur3 of ``view:feature``), so serving can read a user's row in one
  HMGET without the Feast SDK on the request path while Feast reads the same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Array, Float64, Int64, String
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.features import ENTITY_OF_VIEW, FEATURE_VIEWS
from personalization.settings import Settings

ENTITY_KEY_SERIALIZATION_VERSION = 3
TS_FIELD_PREFIX = "_ts:"


def item_index_key(project: str) -> str:
    """Sorted set of item ids scored by the time of their latest ``item_stats`` row.

    The online-store writer maintains it; serving refreshes its catalog from it.
    """
    return f"{project}:item_index"


def catalog_index_key(project: str) -> str:
    """Sorted set of item ids scored by the time the writer last applied their catalog
    record (``writer/catalog.py``): serving's catalog refresh reads it beside the item
    index, with a high-water mark of its own, so wall-clock catalog times never hide
    event-time item rows (or the other way round)."""
    return f"{project}:catalog_index"


def key_ttl_s(settings: Settings) -> int | None:
    """TTL of an entity's Redis hash, set again by every write (``privacy.retention_days``;
    None = no TTL). Feast's online store issues the EXPIRE in the write's own pipeline,
    right after the entity's HSET on the same key (one slot on a cluster)."""
    days = settings.privacy.retention_days
    return days * 24 * 3600 if days > 0 else None


def repo_config(settings: Settings) -> RepoConfig:
    settings.registry_file.parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=settings.feast.project,
        registry=str(settings.registry_file),
        provider="local",
        online_store=RedisOnlineStoreConfig(
            type="redis",
            redis_type=RedisType(settings.redis.redis_type),
            connection_string=settings.redis.connection_string,
            key_ttl_seconds=key_ttl_s(settings),
        ),
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=str(settings.feature_repo_path),
    )


def feature_store(settings: Settings) -> FeatureStore:
    return FeatureStore(repo_path=str(settings.feature_repo_path), config=repo_config(settings))


def feature_view(name: str) -> FeatureView:
    return FEATURE_VIEWS[name]


def entity_key(view: str, entity_id: str) -> EntityKeyProto:
    return EntityKeyProto(
        join_keys=[ENTITY_OF_VIEW[view]], entity_values=[ValueProto(string_val=entity_id)]
    )


def redis_key(project: str, view: str, entity_id: str) -> bytes:
    return _redis_key(
        project,
        entity_key(view, entity_id),
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
    )


@cache
def field_key(view: str, feature: str) -> bytes:
    return bytes(_mmh3(f"{view}:{feature}"))


@cache
def ts_field(view: str) -> bytes:
    """The hash field of ``view``'s row timestamp (``_ts:<view>``)."""
    return f"{TS_FIELD_PREFIX}{view}".encode()


@cache
def feature_kinds(view: str) -> dict[str, str]:
    """feature name -> one of int64, double, string, string_list, double_list."""
    kinds = {}
    for fld in FEATURE_VIEWS[view].features:
        dtype = fld.dtype
        if dtype == Int64:
            kinds[fld.name] = "int64"
        elif dtype == Float64:
            kinds[fld.name] = "double"
        elif dtype == String:
            kinds[fld.name] = "string"
        elif dtype == Array(String):
            kinds[fld.name] = "string_list"
        elif dtype == Array(Float64):
            kinds[fld.name] = "double_list"
        elif dtype == Array(Int64):
            kinds[fld.name] = "int64_list"
        else:  # pragma: no cover - a new dtype in features.py needs a codec here
            raise TypeError(f"{view}.{fld.name}: unsupported dtype {dtype}")
    return kinds


def encode_value(kind: str, value: Any) -> ValueProto:
    if kind == "int64":
        return ValueProto(int64_val=int(value))
    if kind == "double":
        return ValueProto(double_val=float(value))
    if kind == "string":
        return ValueProto(string_val=str(value))
    proto = ValueProto()
    if kind == "string_list":
        proto.string_list_val.val.extend(str(v) for v in value)
    elif kind == "double_list":
        proto.double_list_val.val.extend(float(v) for v in value)
    elif kind == "int64_list":
        proto.int64_list_val.val.extend(int(v) for v in value)
    else:
        raise TypeError(f"unknown feature kind {kind}")
    return proto


def encode_row(view: str, row: Mapping[str, Any]) -> dict[str, ValueProto]:
    """A feature row as Feast protos; features missing from ``row`` are left out."""
    kinds = feature_kinds(view)
    return {name: encode_value(kinds[name], row[name]) for name in kinds if name in row}


def timestamp_us(raw: bytes) -> int:
    """Microseconds of a stored ``_ts:<view>`` field (a protobuf Timestamp)."""
    ts = Timestamp()
    ts.ParseFromString(raw)
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def decode_value(proto: ValueProto) -> Any:
    which = proto.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    value = getattr(proto, which)
    if which.endswith("_list_val"):
        return list(value.val)
    return value


_ONEOF_OF_KIND = {
    "int64": "int64_val",
    "double": "double_val",
    "string": "string_val",
    "string_list": "string_list_val",
    "double_list": "double_list_val",
    "int64_list": "int64_list_val",
}


@cache
def _decode_plan(view: str, names: tuple[str, ...]) -> tuple[tuple[str, str, bool], ...]:
    kinds = feature_kinds(view)
    return tuple(
        (name, _ONEOF_OF_KIND[kinds[name]], kinds[name].endswith("_list")) for name in names
    )


def decode_fields(
    view: str, names: Iterable[str], raw_values: Iterable[bytes | None]
) -> dict[str, Any]:
    """Decode an HMGET reply (in ``names`` order) into a feature dict.

    On the request path (one user row, ~40 values): one message parsed into again and
    again, and the value read by the field its feature's dtype implies, is about twice
    as fast as a new message and a generic oneof lookup per value. A value stored with
    another type still decodes (generically).
    """
    plan = _decode_plan(view, tuple(names))
    out: dict[str, Any] = {}
    proto = ValueProto()
    parse, which_oneof = proto.ParseFromString, proto.WhichOneof
    for (name, expected, is_list), raw in zip(plan, raw_values, strict=True):
        if raw is None:
            continue
        parse(raw)
        which = which_oneof("val")
        if which == expected:
            value = getattr(proto, expected)
            out[name] = list(value.val) if is_list else value
        elif which is not None and which != "null_val":
            out[name] = decode_value(proto)
    return out
