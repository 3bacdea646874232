"""The push-notification webhook URLs an A2A request hands the agent.

Two operations carry one: ``SendMessage``/``SendStreamingMessage`` (in
``configuration.taskPushNotificationConfig.url``, v0.3 ``pushNotificationConfig.url``) and
``CreateTaskPushNotificationConfig`` (``url``, v0.3 ``pushNotificationConfig.url``). Every
binding is read: JSON-RPC params, a REST body, and a gRPC message (protobuf, read by field
number: the gateway carries no A2A schema).

Agents decode with lenient parsers: protobuf's JSON mapping takes ``task_push_notification_config``
as well as ``taskPushNotificationConfig``, and Go's decoder matches names case-insensitively. So
keys are compared case-folded and without underscores, every match is collected, and each is
checked: a request with one good and one bad URL is refused, whichever one the agent keeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from policy_service.request.model import Malformed

_PUSH_CONFIG_KEYS = frozenset({"taskpushnotificationconfig", "pushnotificationconfig"})
_SENDS = frozenset({"SendMessage", "SendStreamingMessage"})
_CREATE = "CreateTaskPushNotificationConfig"
CARRIES_PUSH_URL = _SENDS | {_CREATE}

# a2a.proto (v1.0) field numbers: SendMessageRequest.configuration = 3,
# SendMessageConfiguration.task_push_notification_config = 2, TaskPushNotificationConfig.url
# = 4 (tests check them against the a2a-sdk's descriptors).
_GRPC_SEND_PATH = (3, 2, 4)
_GRPC_CREATE_PATH = (4,)
_LEN = 2  # protobuf wire type of strings and embedded messages


def _norm(key: str) -> str:
    return key.casefold().replace("_", "")


def _members(value: Any, names: frozenset[str]) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, member in value.items():
            if _norm(key) in names:
                yield member


def _urls(config: Any) -> Iterator[Any]:
    yield from _members(config, frozenset({"url"}))


def push_urls_in_json(method: str, params: Any) -> tuple[str, ...] | Malformed:
    """The webhook URLs in a JSON-RPC request's params or a REST request's body."""
    if method not in CARRIES_PUSH_URL:
        return ()
    found: list[Any] = []
    if method in _SENDS:
        for configuration in _members(params, frozenset({"configuration"})):
            for config in _members(configuration, _PUSH_CONFIG_KEYS):
                found.extend(_urls(config))
    else:
        found.extend(_urls(params))
        for config in _members(params, _PUSH_CONFIG_KEYS):
            found.extend(_urls(config))
    if not all(isinstance(url, str) for url in found):
        return Malformed("invalid_params", "a push notification url must be a string")
    return tuple(found)


def push_urls_in_grpc(method: str, body: bytes) -> tuple[str, ...] | Malformed:
    """The webhook URLs in a gRPC request body (length-prefixed protobuf messages)."""
    if method not in CARRIES_PUSH_URL:
        return ()
    path = _GRPC_SEND_PATH if method in _SENDS else _GRPC_CREATE_PATH
    urls: list[str] = []
    try:
        for message in _grpc_frames(body):
            for raw in _nested(message, path):
                urls.append(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed("push_url_unreadable", f"the request's push notification URL {exc}")
    return tuple(urls)


def _grpc_frames(body: bytes) -> Iterator[bytes]:
    position = 0
    while position < len(body):
        if len(body) - position < 5:
            raise ValueError("cannot be read: the gRPC frame is cut short")
        compressed, length = body[position], int.from_bytes(body[position + 1 : position + 5])
        if compressed:
            # The gateway cannot see inside a compressed message, so cannot vouch for it.
            raise ValueError("cannot be read: the gRPC message is compressed")
        start = position + 5
        if start + length > len(body):
            raise ValueError("cannot be read: the gRPC frame is cut short")
        yield body[start : start + length]
        position = start + length


def _nested(message: bytes, path: tuple[int, ...]) -> Iterator[bytes]:
    """Every value at a path of field numbers; protobuf merges repeated occurrences of a
    message field, so each occurrence is followed."""
    number, rest = path[0], path[1:]
    for field, wire_type, value in _fields(message):
        if field != number:
            continue
        if wire_type != _LEN or not isinstance(value, bytes):
            raise ValueError("cannot be read: a field has an unexpected wire type")
        if rest:
            yield from _nested(value, rest)
        else:
            yield value


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield field, wire_type, value
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            yield field, wire_type, 0
        elif wire_type == _LEN:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("cannot be read: a field runs past the message")
            yield field, wire_type, data[position : position + length]
            position += length
        else:
            raise ValueError("cannot be read: the message uses groups or a bad wire type")
    if position != len(data):
        raise ValueError("cannot be read: the message is cut short")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("cannot be read: a number is cut short")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
