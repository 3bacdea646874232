"""What the demo MCP servers share: the recorded ASGI app and the standalone runner."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

from policy_service.dev.header_recorder import HeaderRecorder
from policy_service.gateway.demo_topology import MCP_ENDPOINT

MCP_PATH = f"/{MCP_ENDPOINT}"


def recorded_mcp_app(server: MCPServer, *, maxlen: int = 50) -> HeaderRecorder:
    """The server's Streamable HTTP endpoint at ``/mcp``, wrapped in the header recorder.

    The returned recorder is the app; its ``entries()`` / ``last()`` read the log in-process.
    """
    starlette_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        # The SDK turns on DNS-rebinding protection for loopback binds, which answers 421 to
        # any Host it does not expect. Behind the gateway the Host is the gateway's, and a
        # peer-side 421 would look like a policy denial in e2e tests; this loopback-only dev
        # peer has no browser to protect.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return HeaderRecorder(starlette_app, maxlen=maxlen)


def run_standalone(build: Callable[[], ASGIApp], *, description: str, default_port: int) -> None:
    """``python -m policy_service.dev.demo_*``: serve one peer until Ctrl-C."""
    import uvicorn

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    uvicorn.run(build(), host=args.host, port=args.port, log_level="info")
