from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventContext(_message.Message):
    __slots__ = ("device", "country", "referrer", "session_id", "page")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REFERRER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    device: str
    country: str
    referrer: str
    session_id: str
    page: str
    def __init__(self, device: _Optional[str] = ..., country: _Optional[str] = ..., referrer: _Optional[str] = ..., session_id: _Optional[str] = ..., page: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "event_type", "item_id", "category", "price", "quantity", "event_time_ms", "context", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    event_type: str
    item_id: str
    category: str
    price: float
    quantity: int
    event_time_ms: int
    context: EventContext
    properties: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., event_type: _Optional[str] = ..., item_id: _Optional[str] = ..., category: _Optional[str] = ..., price: _Optional[float] = ..., quantity: _Optional[int] = ..., event_time_ms: _Optional[int] = ..., context: _Optional[_Union[EventContext, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...
