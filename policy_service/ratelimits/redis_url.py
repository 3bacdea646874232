"""Where the Redis store connects: a ``redis://``, ``rediss://`` or ``unix://`` URL, parsed once.

The forms are redis-py's, which the store used before it had its own client::

    redis://[[username]:password@]host[:port][/db]     host defaults to localhost, port 6379
    rediss://...                                       the same over TLS, certificate verified
    unix://[[username]:password@]/path/to.sock         a local socket

Query parameters: ``db``, ``username``, ``password`` (for unix URLs, which have no host to
hang them on), and for ``rediss://`` ``ssl_cert_reqs`` (required, optional, none),
``ssl_check_hostname``, ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile`` and
``ssl_keyfile``. Anything else is refused at startup rather than ignored: a setting the
operator believes in but nothing reads is worse than an error.

The URL may carry a password, so no error message here repeats the URL or a query value.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from policy_service.errors import ConfigError

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 6379
_SCHEMES = ("redis", "rediss", "unix")
_CONNECTION_PARAMETERS = frozenset({"db", "username", "password"})
_TLS_PARAMETERS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class RedisEndpoint:
    """One Redis server and how to log in to it."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    unix_path: str | None = None  # set for unix:// URLs; host and port are then unused
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def address(self) -> str:
        """Where, for error messages: never the credentials."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"

    def handshake(self) -> list[tuple[str | int, ...]]:
        """The commands that make a fresh connection ready: AUTH, then SELECT."""
        commands: list[tuple[str | int, ...]] = []
        # As redis-py did: a username alone still logs in (with an empty password).
        if self.username is not None:
            commands.append(("AUTH", self.username, self.password or ""))
        elif self.password is not None:
            commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def parse_redis_url(url: str) -> RedisEndpoint:
    """Raise ``ConfigError`` for what the store could not connect with, naming the part."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not url.lower().startswith(f"{scheme}://"):
        raise ConfigError("Redis URL: the scheme must be redis://, rediss:// or unix://")
    query = _query(parts.query, tls=scheme == "rediss")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("Redis URL: the port is not a number from 0 to 65535") from None
    username = _decoded(parts.username) or query.get("username") or None
    password = _decoded(parts.password) or query.get("password") or None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("Redis URL: a unix:// URL needs a socket path")
        return RedisEndpoint(
            unix_path=unquote(parts.path),
            db=_db(query.get("db")),
            username=username,
            password=password,
        )
    path_db = unquote(parts.path).strip("/")
    return RedisEndpoint(
        host=unquote(parts.hostname) if parts.hostname else DEFAULT_HOST,
        port=port if port is not None else DEFAULT_PORT,
        db=_db(query.get("db", path_db or None)),
        username=username,
        password=password,
        tls=_tls_context(query) if scheme == "rediss" else None,
    )


def _decoded(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


def _query(text: str, *, tls: bool) -> dict[str, str]:
    allowed = _CONNECTION_PARAMETERS | (_TLS_PARAMETERS if tls else frozenset())
    query: dict[str, str] = {}
    for name, values in parse_qs(text, keep_blank_values=True).items():
        if name not in allowed:
            if name in _TLS_PARAMETERS:
                raise ConfigError(f"Redis URL: {name} is for rediss:// URLs only")
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"Redis URL: unknown query parameter {name!r} (known: {known})")
        query[name] = values[-1]
    return query


def _db(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise ConfigError("Redis URL: the database must be a number (redis://host:port/DB)")
    return int(text)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """Built once per store: loading CA certificates is far too slow to do per connection."""
    cert_reqs_name = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs_name not in _CERT_REQS:
        raise ConfigError("Redis URL: ssl_cert_reqs must be required, optional or none")
    cert_reqs = _CERT_REQS[cert_reqs_name]
    check_hostname = _flag(query.get("ssl_check_hostname"), "ssl_check_hostname", default=True)
    try:
        context = ssl.create_default_context(
            cafile=query.get("ssl_ca_certs"), capath=query.get("ssl_ca_path")
        )
        if "ssl_certfile" in query:
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as exc:
        # The file names are the operator's own; the error says which one is wrong.
        raise ConfigError(f"Redis URL: cannot load TLS certificates: {exc}") from None
    # Hostname checking needs verification; turning verification off turns it off too.
    context.check_hostname = check_hostname and cert_reqs is not ssl.CERT_NONE
    context.verify_mode = cert_reqs
    return context


def _flag(text: str | None, name: str, *, default: bool) -> bool:
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(f"Redis URL: {name} must be true or false")
