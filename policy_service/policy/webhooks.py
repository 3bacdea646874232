"""Push-notification webhook URLs: where an A2A caller may aim the agent it calls.

An A2A client hands the agent a URL (``SendMessage``'s push configuration, or a push
notification config of its own) that the agent will later POST to, from inside the
network. Unchecked, the gateway would let any caller aim an agent at internal hosts: the
cloud metadata service, an admin port on loopback (A2A v1.0 section 13.2: agents SHOULD
validate webhook URLs against SSRF; the gateway can do it for every agent at once).

The check is on the URL as written, never on DNS: resolving here and again in the agent
is a race (a name can answer differently each time), so a host is judged by its name or
IP literal, and a host allow list is the strong form. Anything two URL parsers could read
differently (userinfo, backslashes, IPv4 in hex, octal or short forms, control characters)
is refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048

# Names that reach the machine itself or a cloud's metadata service whatever DNS says.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "metadata", "metadata.google.internal")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """What an upstream's bundle allows as a push-notification URL (defaults: strict)."""

    allow_http: bool = False
    allow_private: bool = False
    hosts: tuple[str, ...] = ()  # lower-case names, "*.example.com" for any subdomain

    def refusal(self, url: str) -> str | None:
        """Why this URL may not be handed to an agent, or None when it may."""
        if len(url) > MAX_URL_LENGTH:
            return f"is longer than {MAX_URL_LENGTH} characters"
        if not url.isascii() or not url.isprintable() or "\\" in url or " " in url:
            # Parsers disagree on backslashes, spaces and non-ASCII (IDNA) hosts.
            return "must be plain ASCII with no spaces or backslashes"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "is not a valid URL"
        del port  # only validated: a port out of range is a URL two parsers read apart
        if parts.scheme not in ("https", "http"):
            return "must be an https URL"
        if parts.scheme == "http" and not self.allow_http:
            return "must use https"
        if "@" in parts.netloc:
            # https://hooks.example.com@10.0.0.1/ names 10.0.0.1: refuse, do not guess.
            return "must not carry user information"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "must name a host"
        if "%" in host:
            # URL parsers percent-decode hosts ("%6c%6fcalhost" is localhost to them).
            return "must not percent-encode its host"
        if self.hosts and not any(_host_matches(pattern, host) for pattern in self.hosts):
            return "names a host the gateway's policy does not list"
        if not self.allow_private and _is_local(host):
            return "names a loopback, private, link-local or metadata address"
        return None


def valid_host_pattern(pattern: str) -> bool:
    """Whether a bundle's ``hosts`` entry is a lower-case name, optionally ``*.``-prefixed."""
    return bool(_HOST_PATTERN.fullmatch(pattern))


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        # "*.example.com" is any subdomain, never example.com itself nor evil-example.com.
        return host.endswith(pattern[1:]) and fnmatchcase(host, pattern)
    return host == pattern


def _is_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if _ends_in_a_number(host):
            return True  # "2130706433", "0x7f.1", "127.1": an address to other parsers
        return host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES)
    return _is_local_address(address)


def _is_local_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one reaches that IPv4 host through the mapping,
        # 6to4 or a NAT64 gateway: judge the address inside.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_local_address(embedded)
    return not address.is_global or address.is_multicast


def _ends_in_a_number(host: str) -> bool:
    """The WHATWG URL standard's test for a host it parses as IPv4."""
    last = host.rsplit(".", 1)[-1].lower()
    return last.isdigit() or (last.startswith("0x") and all(c in _HEX for c in last[2:]))


_HEX = frozenset("0123456789abcdef")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
