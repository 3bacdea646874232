"""Audiences as MCP compares them: the resource URI a token was issued for."""

from __future__ import annotations

import re

_URI_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)


def canonical_audience(value: str) -> str:
    """Normalise a resource URI for comparison the way MCP asks.

    Scheme and host compare case-insensitively and one trailing slash is ignored; the path
    stays case-sensitive. Values that are not URIs only lose a trailing slash.
    """
    match = _URI_PREFIX.fullmatch(value)
    if match is not None:
        scheme, authority, rest = match.groups()
        value = f"{scheme.lower()}://{authority.lower()}{rest}"
    return value[:-1] if value.endswith("/") else value


# The caller's audiences come from configuration (an upstream's canonical URI): few distinct
# values, so memoising keeps normalisation off the hot path. Token audiences are never put
# here, so a client cannot grow this cache.
