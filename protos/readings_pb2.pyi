from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClockStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOCK_UNKNOWN: _ClassVar[ClockStatus]
    CLOCK_INFORMATIVE: _ClassVar[ClockStatus]
    CLOCK_SYNCHRONIZED: _ClassVar[ClockStatus]
CLOCK_UNKNOWN: ClockStatus
CLOCK_INFORMATIVE: ClockStatus
CLOCK_SYNCHRONIZED: ClockStatus

class Reading(_message.Message):
    __slots__ = ("meter_id", "seq", "timestamp_ns", "clock", "quality", "names", "units", "values")
    METER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    meter_id: str
    seq: int
    timestamp_ns: int
    clock: ClockStatus
    quality: int
    names: _containers.RepeatedScalarFieldContainer[str]
    units: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, meter_id: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., clock: _Optional[_Union[ClockStatus, str]] = ..., quality: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., units: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("meter_id", "from_ns", "to_ns", "reason", "missed_polls")
    METER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MISSED_POLLS_FIELD_NUMBER: _ClassVar[int]
    meter_id: str
    from_ns: int
    to_ns: int
    reason: str
    missed_polls: int
    def __init__(self, meter_id: _Optional[str] = ..., from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ..., reason: _Optional[str] = ..., missed_polls: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("reading", "gap")
    READING_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    reading: Reading
    gap: Gap
    def __init__(self, reading: _Optional[_Union[Reading, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("gateway_id", "key_id", "seq", "prev_hash", "entries_root", "entry_count", "first_ns", "last_ns", "created_ns")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_NS_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    key_id: str
    seq: int
    prev_hash: bytes
    entries_root: bytes
    entry_count: int
    first_ns: int
    last_ns: int
    created_ns: int
    def __init__(self, gateway_id: _Optional[str] = ..., key_id: _Optional[str] = ..., seq: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., entries_root: _Optional[bytes] = ..., entry_count: _Optional[int] = ..., first_ns: _Optional[int] = ..., last_ns: _Optional[int] = ..., created_ns: _Optional[int] = ...) -> None: ...

class SignedBatch(_message.Message):
    __slots__ = ("header", "signature", "entries")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    signature: bytes
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., signature: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...
