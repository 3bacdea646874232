"""The Python gRPC floor, row (f) of bench/run.py: the least work a grpc.aio Check server can do.

An ``envoy.service.auth.v3.Authorization/Check`` server on grpc.aio with the same xds-protos
types, gRPC server options and Envoy configuration as the policy service, and only the logic
run.py's probes accept:

* no ``Authorization: Bearer`` header, or a token whose payload is not base64url JSON: 401;
* the JSON body's ``params.name`` mapped to a scope through a one-entry table (``get_quote``
  needs ``fininfo:read``); a body that is not such JSON: 400;
* the token's ``scope`` claim without that scope (or an unknown tool): 403;
* otherwise a fixed allow carrying a fixed ``RateLimit-Policy`` field naming the bench's two
  limits, which the probes require of every service row.

Every answer is a CheckResponse built once at start. Nothing is verified (no signature, issuer,
audience or expiry), no JSON-RPC envelope is checked, no bucket is taken, nothing is audited,
counted, logged or traced. Whatever a service row costs above this row is the price of its
logic, not of Python, asyncio, gRPC or Envoy's ext_authz.

    python bench/floor_server.py --listen 127.0.0.1:PORT

Serves ``grpc.health.v1`` too (run.py waits for SERVING); SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import signal
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2_grpc

# The bench request's tool and the scope it needs (tests/support/bundles.py's "read" rule).
TOOL_SCOPES = {"get_quote": "fininfo:read"}
# The field the policy service sends for run.py's BENCH_LIMITS (q per w seconds): the probes
# look for both names in it.
RATELIMIT_POLICY = '"per-client";q=1000000000;w=60, "quotes";q=1000000000;w=60'

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _denied(code: int, http_status: int, headers: dict[str, str]) -> Any:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status),
            headers=[_header(name, value) for name, value in headers.items()],
        ),
    )


ALLOW = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK),
    ok_response=external_auth_pb2.OkHttpResponse(
        response_headers_to_add=[_header("ratelimit-policy", RATELIMIT_POLICY)]
    ),
)
UNAUTHENTICATED = _denied(code_pb2.UNAUTHENTICATED, 401, {"www-authenticate": "Bearer"})
FORBIDDEN = _denied(
    code_pb2.PERMISSION_DENIED,
    403,
    {"www-authenticate": 'Bearer error="insufficient_scope", scope="fininfo:read"'},
)
BAD_REQUEST = _denied(code_pb2.PERMISSION_DENIED, 400, {})


def _bearer_token(http: Any) -> str | None:
    # run.py's Envoy sends encode_raw_headers: each header in header_map, value as bytes.
    for entry in http.header_map.headers:
        if entry.key == "authorization":
            value: str = entry.raw_value.decode("latin-1") if entry.raw_value else entry.value
            break
    else:
        value = http.headers.get("authorization", "")
    if value[:7].lower() != "bearer ":
        return None
    return value[7:]


def decide(http: Any) -> Any:
    """The answer for one request's ``attributes.request.http``: a prebuilt CheckResponse."""
    token = _bearer_token(http)
    if token is None:
        return UNAUTHENTICATED
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        scopes = claims["scope"].split()
    except (IndexError, KeyError, TypeError, AttributeError, ValueError, binascii.Error):
        return UNAUTHENTICATED
    try:
        needed = TOOL_SCOPES.get(json.loads(http.raw_body or http.body)["params"]["name"])
    except (KeyError, TypeError, ValueError):
        return BAD_REQUEST
    return ALLOW if needed is not None and needed in scopes else FORBIDDEN


# xds-protos ships no type stubs, so the generated servicer base is Any to mypy.
class FloorAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return decide(request.attributes.request.http)


async def serve(listen: str) -> None:
    # The policy service's server options (policy_service/server.py), so only the logic differs.
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(FloorAuthorization(), server)
    # grpcio-health-checking's aio submodule is missing from its type hints; it answers
    # SERVING for "" from the start.
    health_pb2_grpc.add_HealthServicer_to_server(
        health.aio.HealthServicer(),  # type: ignore[attr-defined]
        server,
    )
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    # Several floor processes may share one port (SO_REUSEPORT): a health check through it
    # reaches only one of them, so each says here that it serves.
    print(f"serving on {listen}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python bench/floor_server.py",
        description="The Python gRPC floor, row (f) of bench/run.py.",
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve gRPC on")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
