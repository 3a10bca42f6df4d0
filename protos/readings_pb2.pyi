from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("header", "signature", "entry_bytes", "packed_entries")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PACKED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    signature: bytes
    entry_bytes: _containers.RepeatedScalarFieldContainer[bytes]
    packed_entries: EntryPack
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., signature: _Optional[bytes] = ..., entry_bytes: _Optional[_Iterable[bytes]] = ..., packed_entries: _Optional[_Union[EntryPack, _Mapping]] = ...) -> None: ...

class EntryPack(_message.Message):
    __slots__ = ("bodies", "offsets", "names")
    BODIES_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    bodies: bytes
    offsets: bytes
    names: bytes
    def __init__(self, bodies: _Optional[bytes] = ..., offsets: _Optional[bytes] = ..., names: _Optional[bytes] = ...) -> None: ...
