from protos import readings_pb2 as _readings_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("chain_id", "height", "head_hash", "batches_stored", "batches_unsealed", "entries_stored", "gateways", "head_time_ns", "now_ns", "streams", "connected_gateways", "peers")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_STORED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_UNSEALED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_STORED_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    HEAD_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    height: int
    head_hash: bytes
    batches_stored: int
    batches_unsealed: int
    entries_stored: int
    gateways: _containers.RepeatedScalarFieldContainer[str]
    head_time_ns: int
    now_ns: int
    streams: int
    connected_gateways: _containers.RepeatedScalarFieldContainer[str]
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chain_id: _Optional[str] = ..., height: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., batches_stored: _Optional[int] = ..., batches_unsealed: _Optional[int] = ..., entries_stored: _Optional[int] = ..., gateways: _Optional[_Iterable[str]] = ..., head_time_ns: _Optional[int] = ..., now_ns: _Optional[int] = ..., streams: _Optional[int] = ..., connected_gateways: _Optional[_Iterable[str]] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayActivity(_message.Message):
    __slots__ = ("gateway_id", "key_ids", "last_seq", "last_stored_ns", "connected", "batches", "readings", "readings_per_s_1m", "readings_per_s_15m", "rejects", "duplicates")
    class RejectsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_STORED_NS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    READINGS_PER_S_1M_FIELD_NUMBER: _ClassVar[int]
    READINGS_PER_S_15M_FIELD_NUMBER: _ClassVar[int]
    REJECTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    last_seq: int
    last_stored_ns: int
    connected: bool
    batches: int
    readings: int
    readings_per_s_1m: float
    readings_per_s_15m: float
    rejects: _containers.ScalarMap[str, int]
    duplicates: int
    def __init__(self, gateway_id: _Optional[str] = ..., key_ids: _Optional[_Iterable[str]] = ..., last_seq: _Optional[int] = ..., last_stored_ns: _Optional[int] = ..., connected: _Optional[bool] = ..., batches: _Optional[int] = ..., readings: _Optional[int] = ..., readings_per_s_1m: _Optional[float] = ..., readings_per_s_15m: _Optional[float] = ..., rejects: _Optional[_Mapping[str, int]] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GatewayList(_message.Message):
    __slots__ = ("gateways",)
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayActivity]
    def __init__(self, gateways: _Optional[_Iterable[_Union[GatewayActivity, _Mapping]]] = ...) -> None: ...
