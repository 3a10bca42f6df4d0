from protos import readings_pb2 as _readings_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Receipt(_message.Message):
    __slots__ = ("chain_id", "gateway_id", "batch_seq", "batch_hash", "stored_ns", "duplicate", "key_id", "signature")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_HASH_FIELD_NUMBER: _ClassVar[int]
    STORED_NS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    gateway_id: str
    batch_seq: int
    batch_hash: bytes
    stored_ns: int
    duplicate: bool
    key_id: str
    signature: bytes
    def __init__(self, chain_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., batch_seq: _Optional[int] = ..., batch_hash: _Optional[bytes] = ..., stored_ns: _Optional[int] = ..., duplicate: _Optional[bool] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("meter_id", "from_ns", "to_ns")
    METER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    meter_id: str
    from_ns: int
    to_ns: int
    def __init__(self, meter_id: _Optional[str] = ..., from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("certificate_json", "unsealed_entries")
    CERTIFICATE_JSON_FIELD_NUMBER: _ClassVar[int]
    UNSEALED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    certificate_json: str
    unsealed_entries: int
    def __init__(self, certificate_json: _Optional[str] = ..., unsealed_entries: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HubStatus(_message.Message):
    __slots__ = ("chain_id", "height", "head_hash", "batches_stored", "batches_unsealed", "entries_stored", "gateways")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_STORED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_UNSEALED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_STORED_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    height: int
    head_hash: bytes
    batches_stored: int
    batches_unsealed: int
    entries_stored: int
    gateways: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chain_id: _Optional[str] = ..., height: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., batches_stored: _Optional[int] = ..., batches_unsealed: _Optional[int] = ..., entries_stored: _Optional[int] = ..., gateways: _Optional[_Iterable[str]] = ...) -> None: ...
