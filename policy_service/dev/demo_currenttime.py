"""A current-time MCP server for the dev stack: the smallest useful, harmless upstream.

Tools: ``current_time(timezone="UTC")`` (IANA zone names, resolved with ``zoneinfo``) and
``list_timezones()`` (a fixed short list, so the answer does not depend on the host's tz
database). The clock is a parameter of ``build_app`` so tests can pin it.

The MCP endpoint is ``/mcp``. Like every demo peer it also serves, for tests only,
``GET /_debug/last-headers`` (see ``policy_service.dev.header_recorder``).

Run it alone with ``python -m policy_service.dev.demo_currenttime [--host H] [--port P]``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from policy_service.dev import serving
from policy_service.dev.header_recorder import HeaderRecorder
from policy_service.dev.serving import recorded_mcp_app, run_standalone
from policy_service.gateway.demo_topology import CURRENTTIME

MCP_PATH: Final = serving.MCP_PATH

COMMON_TIMEZONES: Final[tuple[str, ...]] = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Paris",
    "Asia/Tokyo",
    "Australia/Sydney",
)

Clock = Callable[[], datetime]
"""Returns an aware datetime (any zone); the server converts it."""


class CurrentTime(TypedDict):
    timezone: str
    iso: str
    unix: int


def system_clock() -> datetime:
    return datetime.now(UTC)


def build_server(clock: Clock = system_clock) -> MCPServer:
    """The MCP server object, without any transport (useful for in-process tests)."""
    server: MCPServer = MCPServer(
        "currenttime",
        title="Current time (demo)",
        version="0.1.0",
        instructions="Tells the time in an IANA timezone.",
    )

    @server.tool(description="The current time in an IANA timezone, e.g. 'Europe/Paris'.")
    def current_time(timezone: str = "UTC") -> CurrentTime:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            # ToolError reaches the caller as an isError result with this text; any other
            # exception would be reported as an anonymous crash.
            raise ToolError(f"unknown timezone {timezone!r}") from exc
        now = clock().astimezone(zone)
        return CurrentTime(timezone=timezone, iso=now.isoformat(), unix=int(now.timestamp()))

    @server.tool(description="A few common IANA timezone names.")
    def list_timezones() -> list[str]:
        return list(COMMON_TIMEZONES)

    return server


def build_app(*, clock: Clock = system_clock, maxlen: int = 50) -> HeaderRecorder:
    """The ASGI app: the MCP endpoint at ``/mcp``, wrapped in the header recorder."""
    return recorded_mcp_app(build_server(clock), maxlen=maxlen)


def main() -> None:
    run_standalone(build_app, description=__doc__.splitlines()[0], default_port=CURRENTTIME.port)


if __name__ == "__main__":
    main()
