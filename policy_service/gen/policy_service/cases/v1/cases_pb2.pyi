from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaseFile(_message.Message):
    __slots__ = ("cases",)
    CASES_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[Case]
    def __init__(self, cases: _Optional[_Iterable[_Union[Case, _Mapping]]] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("name", "caller", "call", "expect", "repeat")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    EXPECT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    caller: Caller
    call: Call
    expect: Expectation
    repeat: int
    def __init__(self, name: _Optional[str] = ..., caller: _Optional[_Union[Caller, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ..., expect: _Optional[_Union[Expectation, _Mapping]] = ..., repeat: _Optional[int] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("subject", "client_id", "issuer", "scopes", "claims", "api_key", "token", "token_env")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ENV_FIELD_NUMBER: _ClassVar[int]
    subject: str
    client_id: str
    issuer: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    claims: _struct_pb2.Struct
    api_key: str
    token: str
    token_env: str
    def __init__(self, subject: _Optional[str] = ..., client_id: _Optional[str] = ..., issuer: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., claims: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., api_key: _Optional[str] = ..., token: _Optional[str] = ..., token_env: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("upstream", "tool", "resource", "prompt", "method", "a2a_method", "arguments", "headers", "protocol_version")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    A2A_METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    tool: str
    resource: str
    prompt: str
    method: str
    a2a_method: str
    arguments: _struct_pb2.Struct
    headers: _containers.ScalarMap[str, str]
    protocol_version: str
    def __init__(self, upstream: _Optional[str] = ..., tool: _Optional[str] = ..., resource: _Optional[str] = ..., prompt: _Optional[str] = ..., method: _Optional[str] = ..., a2a_method: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., protocol_version: _Optional[str] = ...) -> None: ...

class Expectation(_message.Message):
    __slots__ = ("decision", "reason", "rule", "missing_scopes", "status", "dry_run")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MISSING_SCOPES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    decision: str
    reason: str
    rule: str
    missing_scopes: _containers.RepeatedScalarFieldContainer[str]
    status: int
    dry_run: _containers.RepeatedCompositeFieldContainer[DryRunExpectation]
    def __init__(self, decision: _Optional[str] = ..., reason: _Optional[str] = ..., rule: _Optional[str] = ..., missing_scopes: _Optional[_Iterable[str]] = ..., status: _Optional[int] = ..., dry_run: _Optional[_Iterable[_Union[DryRunExpectation, _Mapping]]] = ...) -> None: ...

class DryRunExpectation(_message.Message):
    __slots__ = ("name", "decision", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    decision: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
