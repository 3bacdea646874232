"""JWKS parsing and the file and URL key sources (no network: a fake fetcher)."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policy_service.errors import KeySourceError
from policy_service.fetching import DowngradeRefused, NoDowngradeRedirects
from policy_service.identity.jwks import (
    FAILED_FETCH_RETRY_SECONDS,
    FileKeySource,
    KeySet,
    UrlKeySource,
    UrllibJwksFetcher,
    b64url_decode,
    parse_jwks,
)
from policy_service.identity.signing import SigningKey
from policy_service.testing import FakeClock, FakeJwksFetcher

URL = "https://idp.example.com/jwks"


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256", kid="rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.generate("ES256", kid="ec-1")


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey.generate("EdDSA", kid="ed-1")


def doc(*jwks: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


def without_alg(jwk: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in jwk.items() if k != "alg"}


# --- parsing ---------------------------------------------------------------------------


def test_parses_each_supported_key_type(
    rsa_key: SigningKey, ec_key: SigningKey, ed_key: SigningKey
) -> None:
    keys = parse_jwks(
        doc(
            without_alg(rsa_key.public_jwk()),
            without_alg(ec_key.public_jwk()),
            without_alg(ed_key.public_jwk()),
        ),
        source="test",
        strict=True,
    )
    by_kid = {key.kid: key for key in keys.keys}
    assert by_kid["rsa-1"].algorithms == {"RS256", "PS256"}
    assert isinstance(by_kid["rsa-1"].public_key, rsa.RSAPublicKey)
    assert by_kid["ec-1"].algorithms == {"ES256"}
    assert isinstance(by_kid["ec-1"].public_key, ec.EllipticCurvePublicKey)
    assert by_kid["ed-1"].algorithms == {"EdDSA"}
    assert isinstance(by_kid["ed-1"].public_key, Ed25519PublicKey)


def test_declared_alg_narrows_the_key(rsa_key: SigningKey) -> None:
    keys = parse_jwks(doc(rsa_key.public_jwk()), source="test", strict=True)
    assert keys.keys[0].algorithms == {"RS256"}


def test_private_members_are_never_loaded() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(private))
    jwk.pop("key_ops", None)  # pyjwt marks private JWKs as sign-only
    assert "d" in jwk
    keys = parse_jwks(doc(jwk), source="test", strict=True)
    assert isinstance(keys.keys[0].public_key, rsa.RSAPublicKey)


def _p384_jwk() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP384R1())
    return json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))  # type: ignore[no-any-return]


def _ed448_jwk() -> dict[str, Any]:
    public = Ed448PrivateKey.generate().public_key()
    return json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(public))  # type: ignore[no-any-return]


def _rsa1024_jwk() -> dict[str, Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - under test
    return json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda k: {**k, "use": "enc"}, id="use-enc"),
        pytest.param(lambda k: {**k, "key_ops": ["encrypt"]}, id="key_ops-without-verify"),
        pytest.param(lambda k: {**k, "alg": "ES256"}, id="alg-of-another-type"),
        pytest.param(lambda k: {**k, "alg": "RS512"}, id="alg-unsupported"),
        pytest.param(lambda k: {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, id="oct"),
        pytest.param(lambda k: _p384_jwk(), id="ec-p384"),
        pytest.param(lambda k: _ed448_jwk(), id="ed448"),
        pytest.param(lambda k: _rsa1024_jwk(), id="rsa-1024"),
        pytest.param(lambda k: {"kty": "XYZ"}, id="unknown-kty"),
    ],
)
def test_keys_we_do_not_use_are_ignored(rsa_key: SigningKey, make: Any) -> None:
    ignored = make(without_alg(rsa_key.public_jwk()))
    for strict in (True, False):
        keys = parse_jwks(doc(ignored, rsa_key.public_jwk()), source="test", strict=strict)
        assert [key.kid for key in keys.keys] == ["rsa-1"]


def test_sig_use_and_verify_key_ops_are_accepted(ec_key: SigningKey) -> None:
    jwk = {**ec_key.public_jwk(), "use": "sig", "key_ops": ["verify"]}
    assert len(parse_jwks(doc(jwk), source="test", strict=True).keys) == 1


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda k: {**k, "n": "!!!"}, id="bad-base64"),
        pytest.param(lambda k: {key: v for key, v in k.items() if key != "e"}, id="missing-e"),
        pytest.param(lambda k: {**k, "kid": 12}, id="kid-not-string"),
        pytest.param(lambda k: "not an object", id="not-an-object"),
    ],
)
def test_a_malformed_key_raises_when_strict_and_is_skipped_otherwise(
    rsa_key: SigningKey, ec_key: SigningKey, broken: Any
) -> None:
    bad = broken(rsa_key.public_jwk())
    with pytest.raises(KeySourceError, match=r"key #0.* (is malformed|is not an object)") as info:
        parse_jwks(doc(bad, ec_key.public_jwk()), source="JWKS file x", strict=True)
    assert rsa_key.public_jwk()["n"] not in str(info.value)  # no key material in messages
    keys = parse_jwks(doc(bad, ec_key.public_jwk()), source="test", strict=False)
    assert [key.kid for key in keys.keys] == ["ec-1"]


def test_ec_point_off_the_curve_is_malformed(ec_key: SigningKey) -> None:
    jwk = ec_key.public_jwk()
    off_curve = {**jwk, "y": jwk["x"]}  # (x, x) is not on P-256 for a random x
    with pytest.raises(KeySourceError, match="malformed"):
        parse_jwks(doc(off_curve), source="test", strict=True)


def test_wrong_coordinate_length_is_malformed(ed_key: SigningKey) -> None:
    jwk = {**ed_key.public_jwk(), "x": "AAAA"}
    with pytest.raises(KeySourceError, match=r"key #0 \(kid 'ed-1'\) is malformed"):
        parse_jwks(doc(jwk), source="test", strict=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "not a JWKS"),
        (b'{"keys": {}}', "not a JWKS"),
        (b'{"kid": "x"}', "not a JWKS"),
    ],
)
def test_a_document_that_is_not_a_jwks_always_raises(data: bytes, message: str) -> None:
    for strict in (True, False):
        with pytest.raises(KeySourceError, match=message):
            parse_jwks(data, source="test", strict=strict)


def test_keyset_find(ec_key: SigningKey, rsa_key: SigningKey) -> None:
    keys = parse_jwks(doc(ec_key.public_jwk(), rsa_key.public_jwk()), source="t", strict=True)
    assert [key.kid for key in keys.find("ec-1")] == ["ec-1"]
    assert keys.find("nope") == ()
    assert [key.kid for key in keys.find(None)] == ["ec-1", "rsa-1"]
    assert KeySet.of([]).find(None) == ()


@pytest.mark.parametrize(("text", "decoded"), [("", b""), ("QQ", b"A"), ("QUJD", b"ABC")])
def test_b64url_decode(text: str, decoded: bytes) -> None:
    assert b64url_decode(text) == decoded


@pytest.mark.parametrize("text", ["Q", "QQ==", "a+b/", "QU JD", "QU\nJD"])
def test_b64url_decode_is_strict(text: str) -> None:
    with pytest.raises(ValueError, match="not base64url"):
        b64url_decode(text)


def test_verification_key_refuses_other_algorithms_and_bad_lengths(ec_key: SigningKey) -> None:
    key = parse_jwks(doc(ec_key.public_jwk()), source="t", strict=True).keys[0]
    token = ec_key.mint({"sub": "x"})
    header, payload, signature = token.split(".")
    signing_input = f"{header}.{payload}".encode()
    raw = b64url_decode(signature)
    assert key.verify("ES256", signing_input, raw)
    assert not key.verify("RS256", signing_input, raw)
    assert not key.verify("ES256", signing_input, raw[:63])
    assert not key.verify("ES256", signing_input + b"x", raw)


# --- FileKeySource ---------------------------------------------------------------------


async def test_file_source_loads_at_start(tmp_path: Path, ec_key: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(ec_key.jwks()))
    source = FileKeySource(str(path))
    assert await source.keys_for("ec-1") is None  # nothing before start
    await source.start()
    found = await source.keys_for("ec-1")
    assert found is not None
    assert [key.kid for key in found] == ["ec-1"]
    assert await source.keys_for("other") == ()


async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(KeySourceError, match=r"absent\.json: cannot read"):
        await FileKeySource(str(path)).start()


async def test_bad_file_message_has_no_key_material(tmp_path: Path, rsa_key: SigningKey) -> None:
    jwk = rsa_key.public_jwk()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "e": "!!" + jwk["n"]}]}))
    with pytest.raises(KeySourceError, match="malformed") as info:
        await FileKeySource(str(path)).start()
    assert jwk["n"] not in str(info.value)
    assert "jwks.json" in str(info.value)


async def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b" " * (1 << 20) + b'{"keys": []}')
    with pytest.raises(KeySourceError, match="larger than"):
        await FileKeySource(str(path)).start()


# --- UrlKeySource ----------------------------------------------------------------------


def url_source(
    fetcher: FakeJwksFetcher, clock: FakeClock, *, cache: float = 300, refresh: float = 30
) -> UrlKeySource:
    return UrlKeySource(
        URL, cache_seconds=cache, min_refresh_seconds=refresh, fetcher=fetcher, clock=clock
    )


async def kids(source: UrlKeySource, kid: str | None) -> list[str | None] | None:
    found = await source.keys_for(kid)
    return None if found is None else [key.kid for key in found]


async def test_keys_are_cached_for_cache_seconds(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=300)
    await source.start()
    assert fetcher.count() == 1
    clock.advance(299)
    assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 1
    clock.advance(1)
    assert await kids(source, "ec-1") == ["ec-1"]  # due: refreshed in the background
    await source.wait_idle()
    assert fetcher.count() == 2


async def test_unknown_kid_refresh_is_rate_limited(ec_key: SigningKey, ed_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, refresh=30)
    await source.start()
    assert await kids(source, "ed-1") == []
    assert fetcher.count() == 1  # the start fetch was < 30 s ago
    fetcher.documents[URL] = {"keys": [ec_key.public_jwk(), ed_key.public_jwk()]}
    clock.advance(29.9)
    assert await kids(source, "ed-1") == []
    assert fetcher.count() == 1
    clock.advance(0.1)
    assert await kids(source, "ed-1") == ["ed-1"]
    assert fetcher.count() == 2
    for _ in range(10):
        assert await kids(source, "garbage") == []
    assert fetcher.count() == 2


async def test_known_kid_never_triggers_a_refresh(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock)
    await source.start()
    clock.advance(100)
    for _ in range(5):
        assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 1


async def test_cached_keys_survive_an_outage(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=60, refresh=30)
    await source.start()
    fetcher.fail = True
    clock.advance(61)  # stale: a refresh is attempted, fails, cached keys stay
    assert await kids(source, "ec-1") == ["ec-1"]
    await source.wait_idle()
    assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 2
    for _ in range(5):  # and the failing provider is not hammered
        assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 2
    clock.advance(FAILED_FETCH_RETRY_SECONDS)  # due again: retried, not by the kid limit
    assert await kids(source, "ec-1") == ["ec-1"]
    await source.wait_idle()
    assert fetcher.count() == 3


async def test_a_broken_document_keeps_the_cached_keys(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=60)
    await source.start()
    fetcher.documents[URL] = b"<html>maintenance</html>"
    clock.advance(61)
    assert await kids(source, "ec-1") == ["ec-1"]
    await source.wait_idle()
    assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 2


async def test_an_empty_jwks_replaces_the_cache(ec_key: SigningKey) -> None:
    # The provider's document is authoritative: removing every key revokes them.
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=60)
    await source.start()
    fetcher.documents[URL] = {"keys": []}
    clock.advance(61)
    assert await kids(source, "ec-1") == ["ec-1"]  # the refresh runs behind this check
    await source.wait_idle()
    assert await kids(source, "ec-1") == []


async def test_nothing_cached_means_unavailable_and_retries_sooner(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher()
    source = url_source(fetcher, clock, refresh=60)
    await source.start()  # does not raise
    assert source.loaded is False
    assert await kids(source, "ec-1") is None
    assert fetcher.count() == 1
    clock.advance(FAILED_FETCH_RETRY_SECONDS - 0.5)
    assert await kids(source, "ec-1") is None
    assert fetcher.count() == 1
    fetcher.documents[URL] = ec_key.jwks()
    clock.advance(0.5)
    assert await kids(source, "ec-1") == ["ec-1"]
    assert fetcher.count() == 2
    assert source.loaded is True


async def test_concurrent_refreshes_share_one_fetch(ec_key: SigningKey, ed_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock)
    await source.start()
    fetcher.documents[URL] = {"keys": [ec_key.public_jwk(), ed_key.public_jwk()]}
    fetcher.gate = asyncio.Event()
    clock.advance(31)
    waiters = [asyncio.create_task(kids(source, "ed-1")) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert fetcher.count() == 2
    fetcher.gate.set()
    assert await asyncio.gather(*waiters) == [["ed-1"]] * 20
    assert fetcher.count() == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(
    ec_key: SigningKey, ed_key: SigningKey
) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock)
    await source.start()
    fetcher.documents[URL] = {"keys": [ed_key.public_jwk()]}
    fetcher.gate = asyncio.Event()
    clock.advance(31)
    first = asyncio.create_task(kids(source, "ed-1"))
    second = asyncio.create_task(kids(source, "ed-1"))
    await asyncio.sleep(0)
    first.cancel()
    fetcher.gate.set()
    assert await second == ["ed-1"]
    assert first.cancelled()
    assert fetcher.count() == 2


async def test_aclose_cancels_an_inflight_fetch(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    fetcher.gate = asyncio.Event()
    source = url_source(fetcher, clock)
    starting = asyncio.create_task(source.start())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await source.aclose()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert source.loaded is False


# --- UrlKeySource: a hanging provider never holds a check long --------------------------

WAIT = 0.05  # the longest a check waits for a fetch here (the default is 0.3 s)


def hanging_source(
    fetcher: FakeJwksFetcher, clock: FakeClock, *, cache: float = 300, refresh: float = 30
) -> UrlKeySource:
    return UrlKeySource(
        URL,
        cache_seconds=cache,
        min_refresh_seconds=refresh,
        fetcher=fetcher,
        clock=clock,
        wait_seconds=WAIT,
    )


async def test_a_due_refresh_never_holds_a_check_with_a_cached_key(ec_key: SigningKey) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = hanging_source(fetcher, clock, cache=60)
    await source.start()
    fetcher.gate = asyncio.Event()  # the provider accepts and never answers
    clock.advance(61)
    async with asyncio.timeout(1):
        for _ in range(50):  # every check answers from the cache without waiting at all
            assert await asyncio.wait_for(kids(source, "ec-1"), 0.01) == ["ec-1"]
            await asyncio.sleep(0)
    assert fetcher.count() == 2  # one refresh in flight, not one per check
    fetcher.gate.set()
    await source.wait_idle()
    assert source.refreshes_ok == 2


async def test_an_unknown_kid_waits_a_bounded_time_and_the_fetch_carries_on(
    ec_key: SigningKey, ed_key: SigningKey
) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = hanging_source(fetcher, clock)
    await source.start()
    fetcher.documents[URL] = {"keys": [ec_key.public_jwk(), ed_key.public_jwk()]}
    fetcher.gate = asyncio.Event()
    clock.advance(30)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(2):
        started = loop.time()
        assert await kids(source, "ed-1") == []  # refused as an unknown kid, in time
        assert WAIT <= loop.time() - started < WAIT + 0.2
        assert await kids(source, "ed-1") == []  # joins the same fetch, within the bound
        assert fetcher.count() == 2
        fetcher.gate.set()  # the provider answers: the next check has the new key
        await source.wait_idle()
        assert await kids(source, "ed-1") == ["ed-1"]
    assert fetcher.count() == 2


async def test_nothing_cached_and_a_hanging_provider_is_unavailable_in_time(
    ec_key: SigningKey,
) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    fetcher.gate = asyncio.Event()
    source = hanging_source(fetcher, clock)
    async with asyncio.timeout(2):
        assert await kids(source, "ec-1") is None
        assert await kids(source, "ec-1") is None
        assert fetcher.count() == 1
        fetcher.gate.set()
        await source.wait_idle()
        assert await kids(source, "ec-1") == ["ec-1"]


async def test_a_short_cache_refreshes_on_its_own_period_not_the_kid_limit(
    ec_key: SigningKey,
) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=2, refresh=30)
    await source.start()
    for period in range(1, 11):  # 20 s: ten refreshes, though the kid limit is 30 s
        clock.advance(1.9)
        assert await kids(source, "ec-1") == ["ec-1"]
        await source.wait_idle()
        assert fetcher.count() == period
        clock.advance(0.1)
        assert await kids(source, "ec-1") == ["ec-1"]
        await source.wait_idle()
        assert fetcher.count() == period + 1


async def test_a_failed_refresh_retries_on_the_cache_period_when_shorter(
    ec_key: SigningKey,
) -> None:
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=2, refresh=30)
    await source.start()
    fetcher.fail = True
    for attempt in range(2, 6):
        clock.advance(2)
        assert await kids(source, "ec-1") == ["ec-1"]
        await source.wait_idle()
        assert fetcher.count() == attempt
    assert source.refreshes_failed == 4


async def test_the_kid_limit_counts_from_the_last_fetch_of_any_kind(ec_key: SigningKey) -> None:
    # A refresh on expiry is as fresh as one for a kid: garbage kids right after it wait.
    clock = FakeClock()
    fetcher = FakeJwksFetcher({URL: ec_key.jwks()})
    source = url_source(fetcher, clock, cache=60, refresh=30)
    await source.start()
    clock.advance(60)
    assert await kids(source, "ec-1") == ["ec-1"]
    await source.wait_idle()
    clock.advance(29)
    assert await kids(source, "garbage") == []
    assert fetcher.count() == 2
    clock.advance(1)
    assert await kids(source, "garbage") == []
    assert fetcher.count() == 3


# --- UrllibJwksFetcher (no network needed for these) -----------------------------------


@pytest.mark.parametrize(
    "url", ["file:///etc/hostname", "ftp://user:hunter2@host.example/jwks?token=abc"]
)
async def test_fetcher_only_speaks_http(url: str) -> None:
    with pytest.raises(KeySourceError, match="only http and https") as info:
        await UrllibJwksFetcher().fetch(url, 1.0)
    assert "hunter2" not in str(info.value)  # user info and query are redacted
    assert "token=abc" not in str(info.value)


def test_redirects_from_https_to_http_are_refused() -> None:
    # Following such a redirect would let anyone on the network path supply the keys.
    handler = NoDowngradeRedirects()
    request = urllib.request.Request("https://idp.example.com/jwks")
    with pytest.raises(DowngradeRefused, match="refused a redirect from https to http"):
        handler.redirect_request(
            request, io.BytesIO(), 302, "Found", {}, "http://idp.example.com/jwks"
        )
    followed = handler.redirect_request(
        request, io.BytesIO(), 302, "Found", {}, "https://keys.example.com/jwks"
    )
    assert followed is not None
    assert followed.full_url == "https://keys.example.com/jwks"


async def test_fetcher_reports_an_unparseable_url() -> None:
    with pytest.raises(KeySourceError, match="unparseable URL"):
        await UrllibJwksFetcher().fetch("http://[::1/jwks", 1.0)
