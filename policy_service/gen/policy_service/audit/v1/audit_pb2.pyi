import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditEvent(_message.Message):
    __slots__ = ("schema", "time", "decision_id", "trace_id", "span_id", "request_id", "bundle_revision", "decision", "reason", "http_status", "rules", "missing_scopes", "message", "caller", "target", "rate_limit", "latency_ms", "dry_run", "answer", "condition_error")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_REVISION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    MISSING_SCOPES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CONDITION_ERROR_FIELD_NUMBER: _ClassVar[int]
    schema: str
    time: _timestamp_pb2.Timestamp
    decision_id: str
    trace_id: str
    span_id: str
    request_id: str
    bundle_revision: str
    decision: str
    reason: str
    http_status: int
    rules: _containers.RepeatedScalarFieldContainer[str]
    missing_scopes: _containers.RepeatedScalarFieldContainer[str]
    message: str
    caller: Caller
    target: Target
    rate_limit: RateLimitOutcome
    latency_ms: float
    dry_run: _containers.RepeatedCompositeFieldContainer[DryRun]
    answer: Answer
    condition_error: str
    def __init__(self, schema: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., request_id: _Optional[str] = ..., bundle_revision: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., http_status: _Optional[int] = ..., rules: _Optional[_Iterable[str]] = ..., missing_scopes: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., caller: _Optional[_Union[Caller, _Mapping]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., rate_limit: _Optional[_Union[RateLimitOutcome, _Mapping]] = ..., latency_ms: _Optional[float] = ..., dry_run: _Optional[_Iterable[_Union[DryRun, _Mapping]]] = ..., answer: _Optional[_Union[Answer, _Mapping]] = ..., condition_error: _Optional[str] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("status", "hidden", "redacted", "pins", "session")
    class HiddenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RedactedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    status: int
    hidden: _containers.ScalarMap[str, int]
    redacted: _containers.ScalarMap[str, int]
    pins: _containers.RepeatedCompositeFieldContainer[PinMismatch]
    session: str
    def __init__(self, status: _Optional[int] = ..., hidden: _Optional[_Mapping[str, int]] = ..., redacted: _Optional[_Mapping[str, int]] = ..., pins: _Optional[_Iterable[_Union[PinMismatch, _Mapping]]] = ..., session: _Optional[str] = ...) -> None: ...

class PinMismatch(_message.Message):
    __slots__ = ("tool", "status", "mode")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    tool: str
    status: str
    mode: str
    def __init__(self, tool: _Optional[str] = ..., status: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class DryRun(_message.Message):
    __slots__ = ("source", "name", "decision", "reason", "agrees", "missing_scopes")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGREES_FIELD_NUMBER: _ClassVar[int]
    MISSING_SCOPES_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    decision: str
    reason: str
    agrees: bool
    missing_scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., agrees: _Optional[bool] = ..., missing_scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("subject", "issuer", "client_id", "credential", "scopes", "peer_address", "peer_principal")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    subject: str
    issuer: str
    client_id: str
    credential: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    peer_address: str
    peer_principal: str
    def __init__(self, subject: _Optional[str] = ..., issuer: _Optional[str] = ..., client_id: _Optional[str] = ..., credential: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., peer_address: _Optional[str] = ..., peer_principal: _Optional[str] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("upstream", "protocol", "http_method", "path", "calls", "mcp_session_id", "mcp_protocol_version")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    MCP_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MCP_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    protocol: str
    http_method: str
    path: str
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    mcp_session_id: str
    mcp_protocol_version: str
    def __init__(self, upstream: _Optional[str] = ..., protocol: _Optional[str] = ..., http_method: _Optional[str] = ..., path: _Optional[str] = ..., calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., mcp_session_id: _Optional[str] = ..., mcp_protocol_version: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("kind", "method", "name", "jsonrpc_id", "arguments")
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSONRPC_ID_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    method: str
    name: str
    jsonrpc_id: str
    arguments: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., method: _Optional[str] = ..., name: _Optional[str] = ..., jsonrpc_id: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RateLimitOutcome(_message.Message):
    __slots__ = ("verdict", "store_error", "limits")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    STORE_ERROR_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    store_error: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitState]
    def __init__(self, verdict: _Optional[str] = ..., store_error: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[LimitState, _Mapping]]] = ...) -> None: ...

class LimitState(_message.Message):
    __slots__ = ("name", "scope", "remaining", "limit", "window_seconds", "retry_after_ms", "shadow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    remaining: int
    limit: int
    window_seconds: int
    retry_after_ms: int
    shadow: bool
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ..., remaining: _Optional[int] = ..., limit: _Optional[int] = ..., window_seconds: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., shadow: _Optional[bool] = ...) -> None: ...
