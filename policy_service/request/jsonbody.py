"""Strict JSON parsing of request bodies, for a gateway that authorizes what it parses.

A security gateway and the server behind it must read the *same* document. Any input two
JSON parsers may read differently is refused instead of guessed at:

* duplicate object keys (RFC 8259 section 4: names "SHOULD be unique"; parsers disagree on
  which value wins, so ``{"name": "safe", "name": "rm_rf"}`` could be authorized as one
  tool and executed as the other), and keys that differ only in letter case, which
  case-insensitive decoders (Go's encoding/json) treat as the same key;
* ``NaN`` / ``Infinity`` literals and numbers that overflow to infinity (not JSON at all,
  but Python's ``json`` accepts them by default);
* lone UTF-16 surrogate escapes such as ``"\\ud800"`` (RFC 8259 section 8.2: behaviour is
  "unpredictable"; they also cannot be re-encoded as UTF-8 for logs or protobuf metadata);
* invalid UTF-8 and a leading byte order mark (RFC 8259 section 8.1: senders "MUST NOT"
  add one);
* nesting deeper than a small limit (cheap denial of service on recursive consumers).

The common case (a small, flat body) costs little more than ``json.loads``: the decoder is
built once, duplicate keys are detected with one ``dict`` build per object, and the
nesting walk only runs when the body holds more brackets than the depth limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from policy_service.request.model import JsonRpcId, Malformed

DEFAULT_MAX_DEPTH = 64

# JSON-RPC 2.0 section 5.1: -32700 "Parse error: Invalid JSON was received by the server".
PARSE_ERROR = -32700

_JSON_WHITESPACE = b" \t\r\n"  # RFC 8259 section 2: the only insignificant whitespace
# A \u escape in the surrogate range (D800-DFFF). Only when one appears do we pay for the
# full check that every surrogate is part of a valid pair.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Rejected(ValueError):
    """Raised from decoder hooks; carries the Malformed reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Never quote the key: it is body content and may be arbitrarily long.
        raise _Rejected("duplicate_key", "JSON object has a duplicate key")
    # Go's encoding/json (and other decoders) match member names case-insensitively,
    # Unicode folds included (the Kelvin sign is a "k"), last one winning: "method" beside
    # "Method" is a duplicate to them. casefold() folds at least as much. Lower-case ASCII
    # keys, the common case, cannot collide that way and skip the fold.
    if len(obj) > 1 and _may_fold_together(obj) and len({k.casefold() for k in obj}) != len(obj):
        raise _Rejected("duplicate_key", "JSON object has keys that differ only in letter case")
    return obj


def _may_fold_together(obj: dict[str, Any]) -> bool:
    # One join and two C-level checks instead of a generator over the keys: this runs for
    # every object of every body.
    joined = "".join(obj)
    return not (joined.isascii() and joined.islower())


def _reject_constant(literal: str) -> Any:
    raise _Rejected("invalid_json", f"JSON does not allow the literal {literal}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf: another NaN/Infinity in disguise
        raise _Rejected("invalid_json", "JSON number is out of range")
    return value


# Built once: json.loads(..., **hooks) would construct a new decoder on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative walk (no recursion) reporting whether containers nest deeper than limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any | Malformed:
    """Parse ``body`` as one strict JSON document, or say why it is refused.

    Returns the decoded value (dict, list, str, int, float, bool or None) or a
    ``Malformed`` with ``jsonrpc_code`` -32700 and one of the reasons ``empty_body``,
    ``invalid_json``, ``duplicate_key`` or ``too_deep``. A top-level container has
    depth 1; ``max_depth`` levels are allowed.
    """
    if not body.strip(_JSON_WHITESPACE):
        return Malformed("empty_body", "request body is empty", PARSE_ERROR)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed("invalid_json", "request body is not valid UTF-8", PARSE_ERROR)
    if text.startswith("\ufeff"):
        return Malformed("invalid_json", "request body starts with a byte order mark", PARSE_ERROR)
    try:
        value = _DECODER.decode(text)
    except _Rejected as exc:
        return Malformed(exc.reason, exc.message, PARSE_ERROR)
    except json.JSONDecodeError as exc:
        # exc.msg names the problem and exc.pos the offset; neither quotes the body.
        return Malformed(
            "invalid_json", f"request body is not valid JSON ({exc.msg} at {exc.pos})", PARSE_ERROR
        )
    except RecursionError:
        # The C scanner recurses per nesting level; a 100k-deep body ends here, not in a crash.
        return Malformed("too_deep", f"JSON nesting exceeds {max_depth} levels", PARSE_ERROR)
    except ValueError:
        # Integers longer than sys.get_int_max_str_digits() (CVE-2020-10735 guard).
        return Malformed("invalid_json", "JSON number is out of range", PARSE_ERROR)
    # Brackets inside strings only over-count, so few brackets proves shallow nesting.
    if body.count(b"[") + body.count(b"{") > max_depth and _deeper_than(value, max_depth):
        return Malformed("too_deep", f"JSON nesting exceeds {max_depth} levels", PARSE_ERROR)
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        return Malformed("invalid_json", "JSON string has a lone UTF-16 surrogate", PARSE_ERROR)
    return value


def readable_id(message: Any) -> JsonRpcId:
    """The JSON-RPC ``id`` of ``message`` when it is a usable one, else None.

    Used to echo the id into error responses (client SDKs drop errors whose id does not
    match a pending call). Only strings and integers count: ``bool`` is an ``int``
    subclass in Python but not a JSON-RPC id.
    """
    if isinstance(message, dict):
        value = message.get("id")
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
    return None
