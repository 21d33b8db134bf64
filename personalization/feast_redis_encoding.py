"""Feature rows as the bytes Feast's Redis online store keeps, without protobuf objects.

Feast stores an entity as one Redis hash: per feature a field named by the murmur3 of
``view:feature`` holding a serialized ``feast.types.Value``, and ``_ts:<view>`` holding a
serialized ``google.protobuf.Timestamp`` (``RedisOnlineStore.online_write_batch``).
Building a ``Value`` message per feature and serializing it was the writer's largest
cost in the live pipeline (py-spy on the writer at 1,000 events/s: ``encode_row`` 30 %
of its samples, Feast's write 39 %, rows of ~50 features). The few shapes our feature
views use are written here directly in protobuf's wire format, which is stable and
public: a oneof member is always present (even 0 or an empty list), packed repeated
scalars, length-delimited strings. ``tests/unit/test_feast_redis_encoding.py`` checks
every shape byte for byte against the protobuf library, and
``tests/integration/test_online_store_layout.py`` checks whole hashes against what
Feast's own ``online_write_batch`` writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from personalization.feature_store import feature_kinds, field_key

__all__ = ["encode_fields", "encode_value_bytes", "timestamp_bytes"]

_INT64_MASK = (1 << 64) - 1
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]

# Field tags (field number << 3 | wire type) of feast.types.Value's members we write.
_STRING = b"\x12"  # 2, length-delimited
_INT64 = b"\x20"  # 4, varint
_DOUBLE = b"\x29"  # 5, 64-bit
_STRING_LIST = b"\x62"  # 12, length-delimited (StringList)
_INT64_LIST = b"\x72"  # 14 (Int64List)
_DOUBLE_LIST = b"\x7a"  # 15 (DoubleList)
_LIST_VAL = b"\x0a"  # field 1 of the *List messages: ``val``


def _varint(n: int) -> bytes:
    """Unsigned base-128 varint of ``n`` (>= 0)."""
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _in_int64(value: Any) -> int:
    n = int(value)
    if not _INT64_MIN <= n <= _INT64_MAX:
        # As protobuf refuses it: a wrapped value would be stored silently wrong.
        raise ValueError(f"Value out of range: {n}")
    return n & _INT64_MASK


def _int64(value: Any) -> bytes:
    return _INT64 + _varint(_in_int64(value))


def _double(value: Any) -> bytes:
    return _DOUBLE + struct.pack("<d", float(value))


def _string(value: Any) -> bytes:
    return _delimited(_STRING, str(value).encode("utf-8"))


# ``val`` entries of up to 127 bytes (ids, categories: nearly all) take a 2-byte prefix.
_SHORT_ENTRY = [_LIST_VAL + bytes((n,)) for n in range(0x80)]


def _string_list(values: Any) -> bytes:
    parts = []
    for v in values:
        raw = (v if type(v) is str else str(v)).encode("utf-8")
        n = len(raw)
        parts.append(_SHORT_ENTRY[n] + raw if n < 0x80 else _LIST_VAL + _varint(n) + raw)
    return _delimited(_STRING_LIST, b"".join(parts))


def _double_list(values: Any) -> bytes:
    floats = [float(v) for v in values]
    packed = struct.pack(f"<{len(floats)}d", *floats)
    return _delimited(_DOUBLE_LIST, _delimited(_LIST_VAL, packed) if floats else b"")


def _int64_list(values: Any) -> bytes:
    packed = b"".join(_varint(_in_int64(v)) for v in values)
    return _delimited(_INT64_LIST, _delimited(_LIST_VAL, packed) if packed else b"")


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "int64": _int64,
    "double": _double,
    "string": _string,
    "string_list": _string_list,
    "double_list": _double_list,
    "int64_list": _int64_list,
}


def encode_value_bytes(kind: str, value: Any) -> bytes:
    """``feature_store.encode_value(kind, value).SerializeToString()``, without the message."""
    try:
        encoder = _ENCODERS[kind]
    except KeyError:
        raise TypeError(f"unknown feature kind {kind}") from None
    return encoder(value)


@cache
def _plan(view: str) -> tuple[tuple[str, bytes, Callable[[Any], bytes]], ...]:
    """(feature, its hash field, its encoder) for every feature of ``view``, in order."""
    return tuple(
        (name, field_key(view, name), _ENCODERS[kind]) for name, kind in feature_kinds(view).items()
    )


def encode_fields(view: str, row: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The hash fields of ``row``: field key -> serialized Value. Features missing from
    ``row`` are left out (as ``feature_store.encode_row`` leaves them out)."""
    return {key: encode(row[name]) for name, key, encode in _plan(view) if name in row}


def timestamp_bytes(version_us: int) -> bytes:
    """A serialized ``google.protobuf.Timestamp`` of ``version_us`` (µs since the epoch,
    >= 0), as Feast stores a row's event time; zero fields are omitted, as protobuf does."""
    if version_us < 0:
        raise ValueError(f"row version before the epoch: {version_us} µs")
    seconds, micros = divmod(version_us, 1_000_000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    if micros:
        out += b"\x10" + _varint(micros * 1000)
    return out
