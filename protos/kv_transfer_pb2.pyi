from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KVDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_DTYPE_UNSPECIFIED: _ClassVar[KVDtype]
    KV_DTYPE_FLOAT32: _ClassVar[KVDtype]
    KV_DTYPE_BFLOAT16: _ClassVar[KVDtype]
    KV_DTYPE_FLOAT16: _ClassVar[KVDtype]
    KV_DTYPE_FLOAT8_E4M3: _ClassVar[KVDtype]
KV_DTYPE_UNSPECIFIED: KVDtype
KV_DTYPE_FLOAT32: KVDtype
KV_DTYPE_BFLOAT16: KVDtype
KV_DTYPE_FLOAT16: KVDtype
KV_DTYPE_FLOAT8_E4M3: KVDtype

class KVLayout(_message.Message):
    __slots__ = ("num_layers", "num_tokens", "kv_elems", "dtype", "total_bytes")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_ELEMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    num_tokens: int
    kv_elems: int
    dtype: KVDtype
    total_bytes: int
    def __init__(self, num_layers: _Optional[int] = ..., num_tokens: _Optional[int] = ..., kv_elems: _Optional[int] = ..., dtype: _Optional[_Union[KVDtype, str]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class KVHandle(_message.Message):
    __slots__ = ("transfer_id", "address", "backend", "layout", "lease_expires_at_s", "backend_descriptor")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_S_FIELD_NUMBER: _ClassVar[int]
    BACKEND_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    address: str
    backend: str
    layout: KVLayout
    lease_expires_at_s: float
    backend_descriptor: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., address: _Optional[str] = ..., backend: _Optional[str] = ..., layout: _Optional[_Union[KVLayout, _Mapping]] = ..., lease_expires_at_s: _Optional[float] = ..., backend_descriptor: _Optional[bytes] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("layout", "chunk_bytes", "num_chunks", "lease_expires_at_s")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_S_FIELD_NUMBER: _ClassVar[int]
    layout: KVLayout
    chunk_bytes: int
    num_chunks: int
    lease_expires_at_s: float
    def __init__(self, layout: _Optional[_Union[KVLayout, _Mapping]] = ..., chunk_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., lease_expires_at_s: _Optional[float] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("transfer_id", "chunk_bytes", "expected_bytes", "first_chunk", "num_chunks")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    chunk_bytes: int
    expected_bytes: int
    first_chunk: int
    num_chunks: int
    def __init__(self, transfer_id: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., expected_bytes: _Optional[int] = ..., first_chunk: _Optional[int] = ..., num_chunks: _Optional[int] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("transfer_id", "success", "error")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    success: bool
    error: str
    def __init__(self, transfer_id: _Optional[str] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class ChecksumRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class ChecksumResponse(_message.Message):
    __slots__ = ("crc32", "total_bytes")
    CRC32_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    crc32: int
    total_bytes: int
    def __init__(self, crc32: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class RawChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
