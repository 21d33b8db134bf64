"""The writer's hand-written protobuf bytes equal the protobuf library's, for every value
shape our feature views use (``personalization/feast_redis_encoding.py``)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.features import FEATURE_VIEWS
from personalization import feature_store as fs
from personalization.feast_redis_encoding import (
    encode_fields,
    encode_value_bytes,
    timestamp_bytes,
)

EDGES: dict[str, list[Any]] = {
    "int64": [0, 1, -1, 127, 128, 16_383, 16_384, 2**63 - 1, -(2**63), True, 3.9, -3.9],
    "double": [0.0, -0.0, 1.5, -1e-300, 1e300, math.inf, -math.inf, 7],
    "string": ["", "a", "é漢字🙂", "x" * 127, "x" * 128, "y" * 20_000, 42],
    "string_list": [[], [""], ["a", "bé"], ["z" * 200] * 3, [1, 2]],
    "double_list": [[], [0.0], [1.5, -2.25, 1e-300], [1] * 100],
    "int64_list": [[], [0], [1, -2, 2**40, -(2**63)], list(range(300))],
}


@pytest.mark.parametrize("kind", sorted(EDGES))
def test_edge_values_encode_as_protobuf_does(kind: str) -> None:
    for value in EDGES[kind]:
        expected = fs.encode_value(kind, value).SerializeToString()
        assert encode_value_bytes(kind, value) == expected, (kind, value)


def _random(kind: str, rng: random.Random) -> Any:
    if kind == "int64":
        return rng.randrange(-(2**63), 2**63)
    if kind == "double":
        return rng.uniform(-1e9, 1e9) * rng.choice([1, 1e-200, 1e200])
    if kind == "string":
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 300)))
    n = rng.randrange(0, 60)
    if kind == "string_list":
        return [_random("string", rng) for _ in range(n)]
    if kind == "double_list":
        return [_random("double", rng) for _ in range(n)]
    return [_random("int64", rng) for _ in range(n)]


def test_random_values_encode_as_protobuf_does() -> None:
    rng = random.Random(5)
    for kind in EDGES:
        for _ in range(300):
            value = _random(kind, rng)
            assert (
                encode_value_bytes(kind, value) == fs.encode_value(kind, value).SerializeToString()
            )


def test_a_row_is_every_present_feature_under_feasts_field_key() -> None:
    rng = random.Random(9)
    for view in FEATURE_VIEWS:
        kinds = fs.feature_kinds(view)
        row = {name: _random(kind, rng) for name, kind in kinds.items() if rng.random() < 0.7}
        row["not_a_feature"] = 1  # ignored, as encode_row ignores it
        expected = {
            fs.field_key(view, name): proto.SerializeToString()
            for name, proto in fs.encode_row(view, row).items()
        }
        assert encode_fields(view, row) == expected
        assert fs.ts_field(view) == f"{fs.TS_FIELD_PREFIX}{view}".encode()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown feature kind"):
        encode_value_bytes("bool", True)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("int64", 2**63), ("int64", -(2**63) - 1), ("int64", 1e20), ("int64_list", [1, 2**64])],
)
def test_out_of_range_integers_are_refused_as_protobuf_refuses_them(kind: str, value: Any) -> None:
    with pytest.raises(ValueError):
        fs.encode_value(kind, value).SerializeToString()
    with pytest.raises(ValueError, match="out of range"):
        encode_value_bytes(kind, value)


def test_a_version_before_the_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="before the epoch"):
        timestamp_bytes(-1)


@pytest.mark.parametrize(
    "version_us", [0, 1, 999_999, 1_000_000, 1_000_001, 1_700_000_000_000_000, 2**50 + 12_345]
)
def test_timestamps_encode_as_protobuf_does(version_us: int) -> None:
    seconds, micros = divmod(version_us, 1_000_000)
    expected = Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString()
    assert timestamp_bytes(version_us) == expected
    assert fs.timestamp_us(timestamp_bytes(version_us)) == version_us
