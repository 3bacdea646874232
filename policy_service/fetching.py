"""Fetching the service's own inputs over HTTP(S): JWKS documents and policy bundles.

Both are trust anchors, so both follow the same two rules: a redirect from https to http is
refused (anyone on the path could answer the plain request with their own keys or policy),
and a URL is shown in messages without its user info or query (either may hold a secret).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class DowngradeRefused(urllib.error.URLError):
    """A redirect from https to http was refused."""


class NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if req.full_url.lower().startswith("https:") and not newurl.lower().startswith("https:"):
            raise DowngradeRefused("refused a redirect from https to http")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def redact_url(url: str) -> str:
    """The URL without user info or query, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(unparseable URL)"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
