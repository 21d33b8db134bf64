"""Feast value protos: what the writer encodes, the request path decodes."""

from __future__ import annotations

from feast.protos.feast.types.Value_pb2 import Null
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from personalization import feature_store as fs


def _row() -> dict:
    samples = {
        "int64": 7,
        "double": 2.5,
        "string": "mobile",
        "string_list": ["a", "b"],
        "double_list": [0.25, -1.0],
        "int64_list": [3, 1_700_000_000_000],
    }
    return {name: samples[kind] for name, kind in fs.feature_kinds("user_profile").items()}


def test_every_feature_round_trips():
    row = _row()
    names = tuple(row)
    encoded = fs.encode_row("user_profile", row)
    raws = [encoded[name].SerializeToString() for name in names]
    assert fs.decode_fields("user_profile", names, raws) == row


def test_missing_null_and_unexpectedly_typed_values():
    names = ("events_total", "monetary", "segments")
    raws = [
        None,  # field absent from the hash
        ValueProto(null_val=Null.NULL).SerializeToString(),
        # a list feature stored as a scalar by some other writer: decoded as stored
        ValueProto(string_val="solo").SerializeToString(),
    ]
    assert fs.decode_fields("user_profile", names, raws) == {"segments": "solo"}


def test_lists_are_independent_copies():
    names = ("segments", "recent_items")
    encoded = fs.encode_row("user_profile", {"segments": ["x"], "recent_items": ["i1", "i2"]})
    out = fs.decode_fields("user_profile", names, [encoded[n].SerializeToString() for n in names])
    assert out == {"segments": ["x"], "recent_items": ["i1", "i2"]}
    assert isinstance(out["segments"], list)
