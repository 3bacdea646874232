"""The Redis URL forms the store accepts (redis-py's), parsed at startup, and errors that
never repeat a password."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from policy_service.errors import ConfigError
from policy_service.ratelimits.redis_url import RedisEndpoint, parse_redis_url

SECRET = "s3cr%40t-pw"  # percent-encoded in URLs: "s3cr@t-pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://", RedisEndpoint()),
        ("redis://cache.internal", RedisEndpoint(host="cache.internal")),
        ("redis://10.0.0.5:6380/2", RedisEndpoint(host="10.0.0.5", port=6380, db=2)),
        ("REDIS://h:1/0", RedisEndpoint(host="h", port=1)),  # schemes are case-insensitive
        ("redis://h/4?db=5", RedisEndpoint(host="h", db=5)),  # the query wins, as in redis-py
        ("redis://[::1]:7000", RedisEndpoint(host="::1", port=7000)),
        (f"redis://:{SECRET}@h", RedisEndpoint(host="h", password="s3cr@t-pw")),
        (
            f"redis://alice:{SECRET}@h:6379/1",
            RedisEndpoint(host="h", db=1, username="alice", password="s3cr@t-pw"),
        ),
        (
            "redis://h?password=pw&username=bob",
            RedisEndpoint(host="h", username="bob", password="pw"),
        ),
        ("unix:///run/redis.sock", RedisEndpoint(unix_path="/run/redis.sock")),
        (
            "unix:///run/redis.sock?db=3&password=pw",
            RedisEndpoint(unix_path="/run/redis.sock", db=3, password="pw"),
        ),
        ("unix://:pw@/run/redis.sock", RedisEndpoint(unix_path="/run/redis.sock", password="pw")),
    ],
)
def test_urls_parse_as_redis_py_reads_them(url: str, expected: RedisEndpoint) -> None:
    assert parse_redis_url(url) == expected


def test_the_handshake_logs_in_then_selects_the_database() -> None:
    assert RedisEndpoint().handshake() == []
    assert RedisEndpoint(db=2).handshake() == [("SELECT", 2)]
    assert RedisEndpoint(password="pw").handshake() == [("AUTH", "pw")]
    assert RedisEndpoint(username="alice", password="pw", db=1).handshake() == [
        ("AUTH", "alice", "pw"),
        ("SELECT", 1),
    ]
    assert RedisEndpoint(username="alice").handshake() == [("AUTH", "alice", "")]


def test_the_address_in_messages_holds_no_credentials() -> None:
    endpoint = parse_redis_url(f"redis://alice:{SECRET}@cache:6380/1")
    assert endpoint.address == "cache:6380"
    assert parse_redis_url("unix://:pw@/run/r.sock").address == "unix:/run/r.sock"
    assert "s3cr" not in repr(endpoint)


def test_rediss_verifies_the_certificate_and_the_hostname_by_default() -> None:
    endpoint = parse_redis_url("rediss://cache:6380/0")
    assert endpoint.tls is not None
    assert endpoint.tls.verify_mode is ssl.CERT_REQUIRED
    assert endpoint.tls.check_hostname
    assert parse_redis_url("redis://cache:6380/0").tls is None


@pytest.mark.parametrize(
    ("query", "verify_mode", "check_hostname"),
    [
        ("ssl_cert_reqs=none", ssl.CERT_NONE, False),
        ("ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
        ("ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
        ("ssl_cert_reqs=REQUIRED&ssl_check_hostname=true", ssl.CERT_REQUIRED, True),
    ],
)
def test_tls_verification_can_be_relaxed_only_by_asking(
    query: str, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    tls = parse_redis_url(f"rediss://cache?{query}").tls
    assert tls is not None
    assert (tls.verify_mode, tls.check_hostname) == (verify_mode, check_hostname)


def test_tls_files_are_loaded_at_startup(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match="cannot load TLS certificates") as raised:
        parse_redis_url(f"rediss://:{SECRET}@cache?ssl_ca_certs={missing}")
    assert "s3cr" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "the scheme must be redis://, rediss:// or unix://"),
        ("redis:h:6379", "the scheme must be"),
        ("redis://h:port/0", "the port is not a number"),
        ("redis://h:6379/zero", "the database must be a number"),
        ("redis://h?db=-1", "the database must be a number"),
        ("unix://", "a unix:// URL needs a socket path"),
        ("redis://h?socket_timeout=5", "unknown query parameter 'socket_timeout'"),
        ("redis://h?ssl_ca_certs=/etc/ca.pem", "ssl_ca_certs is for rediss:// URLs only"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required, optional or none"),
        ("rediss://h?ssl_check_hostname=perhaps", "ssl_check_hostname must be true or false"),
    ],
)
def test_a_url_the_store_cannot_use_is_refused_at_startup_without_its_password(
    url: str, message: str
) -> None:
    with_password = url.replace("://", f"://:{SECRET}@", 1) if "://" in url else url
    for candidate in (url, with_password):
        with pytest.raises(ConfigError, match=r"^Redis URL: ") as raised:
            parse_redis_url(candidate)
        assert message in str(raised.value)
        assert "s3cr" not in str(raised.value)
