"""Every Envoy config the project ships passes the real ``envoy --mode validate``.

Envoy's validate mode parses the whole bootstrap, resolves every typed extension and opens the
files it names (certificates included), so a config that passes here starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from policy_service.gateway.baselines import (
    render_bare_baseline_config,
    render_native_baseline_config,
)
from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.certs import generate_self_signed
from policy_service.gateway.envoy_config import (
    REFERENCE_CERT_FILE,
    default_reference_path,
    main,
    reference_layout,
    render_reference_yaml,
)
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, OtlpCollector, UpstreamRoute
from tests.support.envoy import (
    EnvoyError,
    EnvoyProcess,
    find_envoy_binary,
    free_port,
    validate_config,
)

REFERENCE = default_reference_path()
ISSUER = "https://issuer.test"
AUDIENCE = "https://gateway.test/bench/"


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str]:
    cert, key = generate_self_signed(tmp_path / "certs")
    return str(cert), str(key)


def test_envoy_binary_is_installed() -> None:
    # The helper raises (never skips) when Envoy is missing; this names the cause up front.
    assert Path(find_envoy_binary()).exists()


def test_checked_in_reference_is_what_the_renderer_writes() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference_yaml(), (
        "envoy/envoy.yaml is stale: run python -m policy_service.gateway.envoy_config"
    )
    assert main(["--check"]) == 0


def test_checked_in_reference_validates(tmp_path: Path) -> None:
    # The file names envoy/certs/tls.{crt,key} relative to the working directory: give Envoy
    # a working directory where those exist, and validate the file exactly as checked in.
    generate_self_signed(tmp_path / Path(REFERENCE_CERT_FILE).parent)
    validate_config(REFERENCE, cwd=tmp_path)


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "envoy.yaml"
    stale.write_text("# old\n", encoding="utf-8")
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", "--output", str(stale)]) == 0


@pytest.mark.parametrize("authz_count", [1, 3])
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-only"])
def test_gateway_layouts_validate(authz_count: int, tls: bool, certs: tuple[str, str]) -> None:
    cert, key = certs
    layout = replace(
        reference_layout(),
        authz=tuple(AuthzEndpoint("127.0.0.1", 9001 + i) for i in range(authz_count)),
        tls_port=8443 if tls else None,
        tls_cert_file=cert if tls else None,
        tls_key_file=key if tls else None,
    )
    validate_config(render_envoy_config(layout))


def test_every_option_at_once_validates(certs: tuple[str, str]) -> None:
    cert, key = certs
    layout = EnvoyLayout(
        upstreams=(
            UpstreamRoute("fininfo", "/fininfo/", "localhost", 9101),
            UpstreamRoute("grpc", "/agents/grpc/", "127.0.0.1", 9105, "/", "a2a", True),
            UpstreamRoute("bench", "/bench/", "", 0, direct_response_body="ok"),
        ),
        authz=(AuthzEndpoint("localhost", 9001), AuthzEndpoint("127.0.0.1", 9002)),
        listen_address="0.0.0.0",
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=cert,
        authz_tls=True,
        authz_ca_file=cert,
        authz_cert_file=cert,
        authz_key_file=key,
        authz_sni="localhost",
        authz_max_concurrent_streams=16,
        authz_timeout_seconds=0.25,
        access_log=False,
        otlp_collector=OtlpCollector("localhost", 4317, tls=True),
        trace_sampling_percent=12.5,
        trace_flush_interval_ms=250,
    )
    validate_config(render_envoy_config(layout))


def test_broken_config_fails_validation_with_envoys_reason() -> None:
    config = render_envoy_config(replace(reference_layout(), tls_port=None))
    config["static_resources"]["clusters"][0]["lb_policy"] = "NO_SUCH_POLICY"
    with pytest.raises(EnvoyError, match="NO_SUCH_POLICY"):
        validate_config(config)


# -- benchmark baselines ------------------------------------------------------------------


def _signing_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "ES256", "use": "sig"})
    return key, json.dumps({"keys": [jwk]})


def _token(key: ec.EllipticCurvePrivateKey, audience: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": audience, "sub": "bench", "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench"})


def test_baselines_validate() -> None:
    _, jwks = _signing_key()
    validate_config(render_native_baseline_config(8081, 9902, jwks, ISSUER, AUDIENCE))
    validate_config(render_bare_baseline_config(8082, 9903))


def test_native_baseline_admits_only_valid_tokens() -> None:
    key, jwks = _signing_key()
    port = free_port()
    config = render_native_baseline_config(port, 0, jwks, ISSUER, AUDIENCE, body="native ok")
    with EnvoyProcess(config), httpx.Client(trust_env=False, timeout=10) as http:
        url = f"http://127.0.0.1:{port}/anything"
        good = http.get(url, headers={"authorization": f"Bearer {_token(key, AUDIENCE)}"})
        wrong_audience = http.get(url, headers={"authorization": f"Bearer {_token(key, 'other')}"})
        missing = http.get(url)
    assert (good.status_code, good.text) == (200, "native ok")
    assert wrong_audience.status_code in (401, 403)
    assert missing.status_code == 401
