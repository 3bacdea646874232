"""Scopes as RFC 6749 section 3.3 writes them, for tokens and bundles alike.

A token's ``scope`` is scope-tokens separated by exactly one SP; a bundle's scopes obey the
same grammar, so a scope a bundle requires and one a token grants can always be compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), that is visible ASCII
# but the double quote and the backslash. Always fullmatch: `$` also matches before a "\n".
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_SCOPE_LIST = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")


def is_scope_token(value: str) -> bool:
    """Whether ``value`` is one RFC 6749 scope-token. Bundles use it for their scopes too,
    so that a scope a bundle requires and one a token grants obey the same grammar."""
    return _SCOPE_TOKEN.fullmatch(value) is not None


def parse_scopes(value: str) -> frozenset[str] | None:
    """The scopes an RFC 6749 section 3.3 ``scope`` string names, or None if it is not one.

    ``scope = scope-token *( SP scope-token )``: exactly one SP (%x20) between tokens and
    none around them. ``str.split()`` would also split on TAB, NBSP, U+2028 and the like,
    so ``"read\\ttrade"`` would grant ``trade`` here while an RFC parser upstream sees one
    unknown scope. ``""`` names no scope: issuers write it for a token without any, and no
    reading of it grants anything.
    """
    if not value:
        return frozenset()
    if _SCOPE_LIST.fullmatch(value) is None:
        return None
    return frozenset(value.split(" "))


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """Scopes from ``scope`` (RFC 8693/9068 string) or else ``scp`` (list or string).

    ``None`` means the claim is malformed and the whole token is refused. Refusing rather
    than dropping the odd element: a claim that two parsers read differently (``"a\\tb"``,
    ``"a  b"``, ``["a b"]``, ``[1]``) names no single set of permissions, so no part of it
    can be trusted to say what the issuer meant; and a refusal (``malformed_token`` in the
    challenge and the metrics) shows an issuer's bug that a silently shorter scope list
    would hide. When both claims are present ``scope`` wins and ``scp`` is not read.
    """
    scope = claims.get("scope")
    if scope is not None:
        return parse_scopes(scope) if isinstance(scope, str) else None
    scp = claims.get("scp")
    if scp is None:
        return frozenset()
    if isinstance(scp, str):
        return parse_scopes(scp)
    # A list element is one scope-token: "a b" would be one scope to us and two to a
    # consumer that splits it, so it is as malformed as a number would be.
    if isinstance(scp, list) and all(isinstance(s, str) and is_scope_token(s) for s in scp):
        return frozenset(scp)
    return None
