"""Identity values as HTTP header values that the upstream reads back exactly.

A claim is attacker-influenced text, and HTTP does not carry every text unchanged: it drops
leading and trailing whitespace, Envoy refuses control characters, and bytes outside ASCII
reach each framework decoded differently. So every value is written with RFC 3986
percent-encoding over its UTF-8 bytes, leaving literal only the visible ASCII characters
(%x21-7E) other than ``%``:

- ``%`` is encoded (``%25``), so a literal ``bob%C3%B1`` and ``bobñ`` stay two values;
- every space is encoded (``%20``), not only the outer ones: the rule is one sentence, an
  encoded value never contains HTTP whitespace for any hop to trim or fold, and a list of
  encoded values can be joined with SP and split on SP without ambiguity;
- everything else outside %x21-7E (controls, DEL, any non-ASCII) is encoded as UTF-8 bytes.

``+`` is a literal plus, never a space: decode with a URI percent-decoder
(``urllib.parse.unquote``, ``decodeURIComponent``, Go's ``url.PathUnescape``), not a form
decoder. Distinct strings always give distinct header values, and decoding gives the string
back (``decode_header_value(encode_header_value(x)) == x``).

A list (the scopes) is each element encoded, deduplicated, sorted and joined by one SP; an
upstream splits on SP and decodes each element.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "decode_header_list",
    "decode_header_value",
    "encode_header_list",
    "encode_header_value",
]

# Visible ASCII but "%": what quote() may leave as it is (letters, digits and "_.-~" it never
# encodes anyway).
# Every check of an allowed call encodes its principal's values, which repeat from check to
# check (tokens are cached until they expire): the encodings are remembered, within bounds.
_CACHED_VALUES = 4096
_LITERAL = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) != "%")
_ALL_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]*")
# The only shapes encode_header_value produces: literal characters and upper-case escapes.
_ALL_LITERAL_LIST = re.compile(r"(?:[\x21-\x24\x26-\x7e]+(?: [\x21-\x24\x26-\x7e]+)*)?")
_ENCODED = re.compile(r"(?:[\x21-\x24\x26-\x7e]|%[0-9A-F]{2})*")


@functools.lru_cache(maxsize=_CACHED_VALUES)
def encode_header_value(value: str) -> str:
    """``value`` as a header value of visible ASCII only, percent-encoding its UTF-8 bytes
    for ``%``, SP and every character outside %x21-7E. Total over ``str``: a lone surrogate
    (not Unicode text, and never let through from a token) is written as the bytes Python's
    ``surrogatepass`` gives it, so even then two values never share an encoding."""
    if _ALL_LITERAL.fullmatch(value) is not None:
        return value  # the usual case (ids, URIs, e-mail addresses): nothing to do
    return quote(value, safe=_LITERAL, encoding="utf-8", errors="surrogatepass")


def decode_header_value(value: str) -> str:
    """The string ``encode_header_value`` turned into ``value``.

    Raises ``ValueError`` for anything it would never produce (a character outside
    %x21-7E, a bare or lower-case ``%`` escape, an escape of a character that is written
    literally, bytes that are not UTF-8), so a test or an upstream finds a header that did
    not come from the gateway rather than reading a second meaning into it.
    """
    if _ENCODED.fullmatch(value) is None:
        raise ValueError("not a gateway-encoded header value")
    try:
        decoded = unquote_to_bytes(value).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError("not a gateway-encoded header value") from exc
    if encode_header_value(decoded) != value:  # e.g. "%41" for "A": one value, one encoding
        raise ValueError("not a gateway-encoded header value")
    return decoded


def encode_header_list(values: Iterable[str]) -> str:
    """Each value encoded, duplicates dropped, sorted and joined by one SP.

    An encoded value never contains SP, so the join splits back unambiguously. An empty
    string has no encoded form that survives the join, so it is left out: a scope is never
    empty (RFC 6749 scope-tokens have at least one character), so no scope is lost.
    """
    # A principal's scopes are a frozenset, the same one for every check of a cached token:
    # encode it once.
    if isinstance(values, frozenset):
        return _encode_set(values)
    return _encode_list(values)


@functools.lru_cache(maxsize=_CACHED_VALUES)
def _encode_set(values: frozenset[str]) -> str:
    return _encode_list(values)


def _encode_list(values: Iterable[str]) -> str:
    unique = {value for value in values if value}
    joined = " ".join(sorted(unique))
    # Literal and space-free values only: "a b" as one value must not pass as two.
    if joined.count(" ") == len(unique) - 1 and _ALL_LITERAL_LIST.fullmatch(joined) is not None:
        return joined  # the usual case (scope-tokens without "%"): one check for the list
    return " ".join(sorted({encode_header_value(value) for value in unique}))


def decode_header_list(value: str) -> frozenset[str]:
    """The values ``encode_header_list`` joined into ``value``. Raises ``ValueError`` for a
    value it would never produce: an empty element (a doubled or outer SP), an element out of
    order or twice, or an element ``decode_header_value`` refuses."""
    decoded = (
        frozenset(decode_header_value(element) for element in value.split(" "))
        if value
        else frozenset()
    )
    if encode_header_list(decoded) != value:
        raise ValueError("not a gateway-encoded header list")
    return decoded
