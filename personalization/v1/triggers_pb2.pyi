from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PartitionOffset(_message.Message):
    __slots__ = ("partition", "offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset: int
    def __init__(self, partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("rules", "positions", "start")
    class Start(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LATEST: _ClassVar[SubscribeRequest.Start]
        EARLIEST: _ClassVar[SubscribeRequest.Start]
    LATEST: SubscribeRequest.Start
    EARLIEST: SubscribeRequest.Start
    RULES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedScalarFieldContainer[str]
    positions: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    start: SubscribeRequest.Start
    def __init__(self, rules: _Optional[_Iterable[str]] = ..., positions: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ..., start: _Optional[_Union[SubscribeRequest.Start, str]] = ...) -> None: ...

class TriggerMessage(_message.Message):
    __slots__ = ("rule", "user_id", "user_id_kind", "time_ms", "evidence_json", "idempotency_key", "resume_from", "kind")
    RULE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    rule: str
    user_id: str
    user_id_kind: str
    time_ms: int
    evidence_json: str
    idempotency_key: str
    resume_from: PartitionOffset
    kind: str
    def __init__(self, rule: _Optional[str] = ..., user_id: _Optional[str] = ..., user_id_kind: _Optional[str] = ..., time_ms: _Optional[int] = ..., evidence_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., resume_from: _Optional[_Union[PartitionOffset, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class ResolveUserRequest(_message.Message):
    __slots__ = ("pseudonym", "reason")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    pseudonym: str
    reason: str
    def __init__(self, pseudonym: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolveUserReply(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...
