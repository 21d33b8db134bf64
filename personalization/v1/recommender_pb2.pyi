from personalization.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "exclude_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: _events_pb2.EventContext
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[_events_pb2.EventContext, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason", "category", "source")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    category: str
    source: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., category: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "strategy", "personalized", "fallback_reason", "recommendation_id", "features_age_ms", "experiment", "variant")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    strategy: str
    personalized: bool
    fallback_reason: str
    recommendation_id: str
    features_age_ms: int
    experiment: str
    variant: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., strategy: _Optional[str] = ..., personalized: bool = ..., fallback_reason: _Optional[str] = ..., recommendation_id: _Optional[str] = ..., features_age_ms: _Optional[int] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "context", "user_id", "exclude_item_ids")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    context: _events_pb2.EventContext
    user_id: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[_events_pb2.EventContext, _Mapping]] = ..., user_id: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("item_id", "items")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    def __init__(self, item_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ...) -> None: ...

class GetUserProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class CategoryInterest(_message.Message):
    __slots__ = ("category", "score")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "found", "counts", "interests", "recent_items", "cart_items", "purchased_items", "session_count", "session_events", "session_duration_s", "last_seen_ms", "recency_days", "frequency", "monetary", "segments", "last_device", "last_country", "features_age_ms", "consent")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CART_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PURCHASED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSION_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    RECENCY_DAYS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    MONETARY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_DEVICE_FIELD_NUMBER: _ClassVar[int]
    LAST_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    found: bool
    counts: _containers.ScalarMap[str, int]
    interests: _containers.RepeatedCompositeFieldContainer[CategoryInterest]
    recent_items: _containers.RepeatedScalarFieldContainer[str]
    cart_items: _containers.RepeatedScalarFieldContainer[str]
    purchased_items: _containers.RepeatedScalarFieldContainer[str]
    session_count: int
    session_events: int
    session_duration_s: int
    last_seen_ms: int
    recency_days: float
    frequency: int
    monetary: float
    segments: _containers.RepeatedScalarFieldContainer[str]
    last_device: str
    last_country: str
    features_age_ms: int
    consent: str
    def __init__(self, user_id: _Optional[str] = ..., found: bool = ..., counts: _Optional[_Mapping[str, int]] = ..., interests: _Optional[_Iterable[_Union[CategoryInterest, _Mapping]]] = ..., recent_items: _Optional[_Iterable[str]] = ..., cart_items: _Optional[_Iterable[str]] = ..., purchased_items: _Optional[_Iterable[str]] = ..., session_count: _Optional[int] = ..., session_events: _Optional[int] = ..., session_duration_s: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., recency_days: _Optional[float] = ..., frequency: _Optional[int] = ..., monetary: _Optional[float] = ..., segments: _Optional[_Iterable[str]] = ..., last_device: _Optional[str] = ..., last_country: _Optional[str] = ..., features_age_ms: _Optional[int] = ..., consent: _Optional[str] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("accepted", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ...) -> None: ...

class SetModelVersionRequest(_message.Message):
    __slots__ = ("model", "action", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: str
    version: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetConsentRequest(_message.Message):
    __slots__ = ("user_id", "personalization", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    personalization: bool
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., personalization: bool = ..., reason: _Optional[str] = ...) -> None: ...

class AdminReply(_message.Message):
    __slots__ = ("audit_id", "subject")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    subject: str
    def __init__(self, audit_id: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...
