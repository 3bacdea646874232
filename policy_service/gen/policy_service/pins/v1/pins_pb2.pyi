from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PinFile(_message.Message):
    __slots__ = ("upstream", "tools")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    tools: _containers.RepeatedCompositeFieldContainer[ToolPin]
    def __init__(self, upstream: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[ToolPin, _Mapping]]] = ...) -> None: ...

class ToolPin(_message.Message):
    __slots__ = ("name", "sha256", "definition")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    definition: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., definition: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
