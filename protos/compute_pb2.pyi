from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SolveTask(_message.Message):
    __slots__ = ("task_id", "n", "k", "indptr", "indices", "data", "rhs", "rhs_indptr", "rhs_indices", "rhs_data", "drop_below")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INDPTR_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RHS_FIELD_NUMBER: _ClassVar[int]
    RHS_INDPTR_FIELD_NUMBER: _ClassVar[int]
    RHS_INDICES_FIELD_NUMBER: _ClassVar[int]
    RHS_DATA_FIELD_NUMBER: _ClassVar[int]
    DROP_BELOW_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    n: int
    k: int
    indptr: bytes
    indices: bytes
    data: bytes
    rhs: bytes
    rhs_indptr: bytes
    rhs_indices: bytes
    rhs_data: bytes
    drop_below: float
    def __init__(self, task_id: _Optional[str] = ..., n: _Optional[int] = ..., k: _Optional[int] = ..., indptr: _Optional[bytes] = ..., indices: _Optional[bytes] = ..., data: _Optional[bytes] = ..., rhs: _Optional[bytes] = ..., rhs_indptr: _Optional[bytes] = ..., rhs_indices: _Optional[bytes] = ..., rhs_data: _Optional[bytes] = ..., drop_below: _Optional[float] = ...) -> None: ...

class SolveAnswer(_message.Message):
    __slots__ = ("task_id", "x", "x_indptr", "x_indices", "x_data", "provider_id", "signature")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    X_INDPTR_FIELD_NUMBER: _ClassVar[int]
    X_INDICES_FIELD_NUMBER: _ClassVar[int]
    X_DATA_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    x: bytes
    x_indptr: bytes
    x_indices: bytes
    x_data: bytes
    provider_id: str
    signature: bytes
    def __init__(self, task_id: _Optional[str] = ..., x: _Optional[bytes] = ..., x_indptr: _Optional[bytes] = ..., x_indices: _Optional[bytes] = ..., x_data: _Optional[bytes] = ..., provider_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...
