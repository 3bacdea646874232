from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bundle(_message.Message):
    __slots__ = ("version", "revision", "issuers", "api_keys", "upstreams", "gateway", "limits", "audit")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ISSUERS_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    version: str
    revision: str
    issuers: _containers.RepeatedCompositeFieldContainer[Issuer]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    upstreams: _containers.RepeatedCompositeFieldContainer[Upstream]
    gateway: Gateway
    limits: _containers.RepeatedCompositeFieldContainer[Limit]
    audit: Audit
    def __init__(self, version: _Optional[str] = ..., revision: _Optional[str] = ..., issuers: _Optional[_Iterable[_Union[Issuer, _Mapping]]] = ..., api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., upstreams: _Optional[_Iterable[_Union[Upstream, _Mapping]]] = ..., gateway: _Optional[_Union[Gateway, _Mapping]] = ..., limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., audit: _Optional[_Union[Audit, _Mapping]] = ...) -> None: ...

class Audit(_message.Message):
    __slots__ = ("include_arguments", "redact_keys")
    INCLUDE_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    REDACT_KEYS_FIELD_NUMBER: _ClassVar[int]
    include_arguments: bool
    redact_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, include_arguments: _Optional[bool] = ..., redact_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Gateway(_message.Message):
    __slots__ = ("identity_header_prefix", "allowed_origins", "api_key_header", "expose_rule_names")
    IDENTITY_HEADER_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_HEADER_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_RULE_NAMES_FIELD_NUMBER: _ClassVar[int]
    identity_header_prefix: str
    allowed_origins: _containers.RepeatedScalarFieldContainer[str]
    api_key_header: str
    expose_rule_names: bool
    def __init__(self, identity_header_prefix: _Optional[str] = ..., allowed_origins: _Optional[_Iterable[str]] = ..., api_key_header: _Optional[str] = ..., expose_rule_names: _Optional[bool] = ...) -> None: ...

class Issuer(_message.Message):
    __slots__ = ("name", "issuer", "jwks_url", "jwks_file", "algorithms", "audiences", "leeway_seconds", "hs256_secret_env", "jwks_cache_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JWKS_URL_FIELD_NUMBER: _ClassVar[int]
    JWKS_FILE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    LEEWAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HS256_SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    JWKS_CACHE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    issuer: str
    jwks_url: str
    jwks_file: str
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    audiences: _containers.RepeatedScalarFieldContainer[str]
    leeway_seconds: float
    hs256_secret_env: str
    jwks_cache_seconds: float
    def __init__(self, name: _Optional[str] = ..., issuer: _Optional[str] = ..., jwks_url: _Optional[str] = ..., jwks_file: _Optional[str] = ..., algorithms: _Optional[_Iterable[str]] = ..., audiences: _Optional[_Iterable[str]] = ..., leeway_seconds: _Optional[float] = ..., hs256_secret_env: _Optional[str] = ..., jwks_cache_seconds: _Optional[float] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "sha256", "subject", "scopes")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    subject: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., subject: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class ClientList(_message.Message):
    __slots__ = ("allow", "deny")
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    allow: _containers.RepeatedScalarFieldContainer[str]
    deny: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allow: _Optional[_Iterable[str]] = ..., deny: _Optional[_Iterable[str]] = ...) -> None: ...

class Upstream(_message.Message):
    __slots__ = ("name", "path_prefix", "protocol", "resource", "denial_style", "required_scopes", "allowed_origins", "clients", "rules", "backend", "authorization_servers", "push_notifications", "responses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    DENIAL_STYLE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_SERVERS_FIELD_NUMBER: _ClassVar[int]
    PUSH_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    path_prefix: str
    protocol: str
    resource: str
    denial_style: str
    required_scopes: _containers.RepeatedScalarFieldContainer[str]
    allowed_origins: _containers.RepeatedScalarFieldContainer[str]
    clients: ClientList
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    backend: str
    authorization_servers: _containers.RepeatedScalarFieldContainer[str]
    push_notifications: PushNotifications
    responses: Responses
    def __init__(self, name: _Optional[str] = ..., path_prefix: _Optional[str] = ..., protocol: _Optional[str] = ..., resource: _Optional[str] = ..., denial_style: _Optional[str] = ..., required_scopes: _Optional[_Iterable[str]] = ..., allowed_origins: _Optional[_Iterable[str]] = ..., clients: _Optional[_Union[ClientList, _Mapping]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., backend: _Optional[str] = ..., authorization_servers: _Optional[_Iterable[str]] = ..., push_notifications: _Optional[_Union[PushNotifications, _Mapping]] = ..., responses: _Optional[_Union[Responses, _Mapping]] = ...) -> None: ...

class Responses(_message.Message):
    __slots__ = ("filter_lists", "max_body_bytes", "redact", "pins", "sessions")
    FILTER_LISTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REDACT_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    filter_lists: bool
    max_body_bytes: int
    redact: Redaction
    pins: Pins
    sessions: Sessions
    def __init__(self, filter_lists: _Optional[bool] = ..., max_body_bytes: _Optional[int] = ..., redact: _Optional[_Union[Redaction, _Mapping]] = ..., pins: _Optional[_Union[Pins, _Mapping]] = ..., sessions: _Optional[_Union[Sessions, _Mapping]] = ...) -> None: ...

class Redaction(_message.Message):
    __slots__ = ("secrets", "patterns")
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    secrets: bool
    patterns: _containers.RepeatedCompositeFieldContainer[RedactionPattern]
    def __init__(self, secrets: _Optional[bool] = ..., patterns: _Optional[_Iterable[_Union[RedactionPattern, _Mapping]]] = ...) -> None: ...

class RedactionPattern(_message.Message):
    __slots__ = ("name", "regex")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    regex: str
    def __init__(self, name: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class Pins(_message.Message):
    __slots__ = ("mode", "file")
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    file: str
    def __init__(self, mode: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...

class Sessions(_message.Message):
    __slots__ = ("bind", "ttl_seconds")
    BIND_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    bind: bool
    ttl_seconds: float
    def __init__(self, bind: _Optional[bool] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class PushNotifications(_message.Message):
    __slots__ = ("allow_http", "allow_private", "hosts")
    ALLOW_HTTP_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    allow_http: bool
    allow_private: bool
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allow_http: _Optional[bool] = ..., allow_private: _Optional[bool] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("name", "tools", "resources", "prompts", "methods", "a2a_methods", "scopes", "clients", "effect", "when", "dry_run")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    A2A_METHODS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.RepeatedScalarFieldContainer[str]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    a2a_methods: _containers.RepeatedScalarFieldContainer[str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    clients: ClientList
    effect: str
    when: str
    dry_run: bool
    def __init__(self, name: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., resources: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., a2a_methods: _Optional[_Iterable[str]] = ..., scopes: _Optional[_Iterable[str]] = ..., clients: _Optional[_Union[ClientList, _Mapping]] = ..., effect: _Optional[str] = ..., when: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Limit(_message.Message):
    __slots__ = ("name", "rate", "burst", "key", "match", "cost", "on_store_failure", "shadow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ON_STORE_FAILURE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    rate: str
    burst: int
    key: _containers.RepeatedScalarFieldContainer[str]
    match: LimitMatch
    cost: int
    on_store_failure: str
    shadow: bool
    def __init__(self, name: _Optional[str] = ..., rate: _Optional[str] = ..., burst: _Optional[int] = ..., key: _Optional[_Iterable[str]] = ..., match: _Optional[_Union[LimitMatch, _Mapping]] = ..., cost: _Optional[int] = ..., on_store_failure: _Optional[str] = ..., shadow: _Optional[bool] = ...) -> None: ...

class LimitMatch(_message.Message):
    __slots__ = ("upstreams", "tools", "resources", "prompts", "methods", "a2a_methods")
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    A2A_METHODS_FIELD_NUMBER: _ClassVar[int]
    upstreams: _containers.RepeatedScalarFieldContainer[str]
    tools: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.RepeatedScalarFieldContainer[str]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    a2a_methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, upstreams: _Optional[_Iterable[str]] = ..., tools: _Optional[_Iterable[str]] = ..., resources: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., a2a_methods: _Optional[_Iterable[str]] = ...) -> None: ...
