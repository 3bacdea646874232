"""Run the three demo peers (two MCP servers and one A2A agent) inside the current event loop.

Tests and the dev stack need real protocol peers behind Envoy. ``serve_peers`` starts them
with uvicorn as tasks of the running loop, returns once every port accepts connections, and
stops them on exit::

    async with serve_peers("127.0.0.1", {"fininfo": 0, "currenttime": 0, "agent": 0},
                           public_base_url="http://127.0.0.1:8080/agents/helper/") as peers:
        peers.fininfo.mcp_url          # http://127.0.0.1:<port>/mcp
        peers.agent.base_url           # http://127.0.0.1:<port>/ (direct, not the card URL)
        peers.agent.recorder.last()    # headers of the agent's last request

Port 0 picks a free port; the socket is bound before any server starts, so a fixed port that
is taken fails at once with ``OSError`` instead of racing. ``AppServer`` and ``bind_socket``
serve any other ASGI app the same way (tests wrap a peer in a fault-injecting layer with them).

For manual use: ``python -m policy_service.dev.peers [--host H] [--fininfo-port P]
[--currenttime-port P] [--agent-port P] [--public-base-url U]`` runs them until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import uvicorn
from starlette.types import ASGIApp

from policy_service.dev import demo_agent, demo_currenttime, demo_fininfo
from policy_service.dev.header_recorder import DEBUG_PATH, HeaderRecorder
from policy_service.gateway.demo_topology import DEMO_UPSTREAMS, default_peer_ports

# One peer per upstream of the demo topology, on the port the reference config routes to.
PEER_NAMES: Final[tuple[str, ...]] = tuple(upstream.peer for upstream in DEMO_UPSTREAMS)
DEFAULT_PORTS: Final[Mapping[str, int]] = default_peer_ports()

logger = logging.getLogger(__name__)


class _LoopServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever owns the event loop.

    ``uvicorn.Server.serve`` swaps in its own SIGINT/SIGTERM handlers; with several servers
    in one loop (and pytest owning Ctrl-C) that would steal the signal from the owner.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AppServer:
    """One ASGI app served by uvicorn as a task of the running event loop."""

    def __init__(
        self,
        name: str,
        app: ASGIApp,
        sock: socket.socket,
        *,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.name = name
        address: tuple[str, int] = sock.getsockname()[:2]
        self.host, self.port = address
        self._sock = sock
        self._shutdown_timeout = shutdown_timeout
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            # An open SSE stream would otherwise hold shutdown until its client goes away.
            timeout_graceful_shutdown=max(1, int(shutdown_timeout) - 1),
        )
        self._server = _LoopServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """The direct URL of the server's root, with a trailing slash."""
        return f"http://{_url_host(self.host)}:{self.port}/"

    async def start(self, startup_timeout: float = 15.0) -> None:
        """Start serving; return once the port accepts connections."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} is already started")
        self._task = asyncio.create_task(self._serve(), name=f"demo-peer-{self.name}")
        try:
            await asyncio.wait_for(self._wait_until_ready(self._task), startup_timeout)
        except BaseException:
            # A half-started server must not outlive the failed start (or its socket leak).
            await self.stop()
            raise

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        except SystemExit as exc:
            # uvicorn reports a failed lifespan startup with sys.exit(); asyncio would
            # re-raise SystemExit out of the whole event loop, ending the test run with it.
            raise RuntimeError(f"{self.name} failed to start (exit code {exc.code})") from None

    async def _wait_until_ready(self, task: asyncio.Task[None]) -> None:
        while not self._server.started:
            if task.done():
                await task  # re-raises the startup error, if any
                raise RuntimeError(f"{self.name} exited during startup")
            await asyncio.sleep(0.02)
        # "started" means uvicorn is listening; prove it with a real connection.
        _reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        await writer.wait_closed()

    async def stop(self) -> None:
        """Ask the server to exit and wait for it; cancel it if it lingers. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            self._sock.close()
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self._shutdown_timeout)
        except TimeoutError:
            logger.warning("%s did not stop in time; cancelling it", self.name)
            self._server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            # A server that crashed has stopped already; whoever started it saw the error,
            # and stopping must go on for the others.
            logger.exception("%s ended with an error", self.name)
        finally:
            self._sock.close()


@dataclass
class RunningPeer:
    """One started demo peer: where it listens and its in-memory request log."""

    name: str
    server: AppServer
    recorder: HeaderRecorder

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        """The direct URL of the peer's root, with a trailing slash."""
        return self.server.base_url

    @property
    def mcp_url(self) -> str:
        """The direct MCP endpoint (meaningful for the two MCP servers only)."""
        return self.base_url + demo_fininfo.MCP_PATH.lstrip("/")

    @property
    def debug_url(self) -> str:
        """Where the peer serves its request log (see ``header_recorder``)."""
        return self.base_url + DEBUG_PATH.lstrip("/")


class DemoPeers:
    """The three demo peers; ``async with`` (or ``start()``/``stop()``) runs them."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        *,
        public_base_url: str | None = None,
        startup_timeout: float = 15.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        chosen = dict(DEFAULT_PORTS if ports is None else ports)
        unknown = sorted(set(chosen) - set(PEER_NAMES))
        missing = sorted(set(PEER_NAMES) - set(chosen))
        if unknown or missing:
            raise ValueError(
                f"ports must name exactly {', '.join(PEER_NAMES)}"
                f" (unknown: {unknown or 'none'}, missing: {missing or 'none'})"
            )
        self.host = host
        self._ports = chosen
        self._public_base_url = public_base_url
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._peers: dict[str, RunningPeer] = {}

    @property
    def fininfo(self) -> RunningPeer:
        return self._peer("fininfo")

    @property
    def currenttime(self) -> RunningPeer:
        return self._peer("currenttime")

    @property
    def agent(self) -> RunningPeer:
        return self._peer("agent")

    @property
    def ports(self) -> dict[str, int]:
        """The port each running peer listens on, by peer name (port 0 resolved)."""
        return {name: peer.port for name, peer in self._peers.items()}

    @property
    def agent_public_url(self) -> str:
        """The URL written into the agent card: ``public_base_url``, or the direct URL."""
        return self._public_base_url or self.agent.base_url

    def _peer(self, name: str) -> RunningPeer:
        try:
            return self._peers[name]
        except KeyError:
            raise RuntimeError(f"peer {name!r} is not running; call start() first") from None

    async def start(self) -> None:
        if self._peers:
            raise RuntimeError("peers are already running")
        # Bind every socket before building any app: the agent card needs its own port when
        # there is no public URL, and a taken port should fail before anything starts.
        sockets: dict[str, socket.socket] = {}
        try:
            for name in PEER_NAMES:
                sockets[name] = bind_socket(self.host, self._ports[name])
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        agent_port = sockets["agent"].getsockname()[1]
        agent_url = self._public_base_url or f"http://{_url_host(self.host)}:{agent_port}/"
        recorders = {
            "fininfo": demo_fininfo.build_app(),
            "currenttime": demo_currenttime.build_app(),
            "agent": demo_agent.build_app(agent_url),
        }
        for name in PEER_NAMES:
            server = AppServer(
                name, recorders[name], sockets[name], shutdown_timeout=self._shutdown_timeout
            )
            self._peers[name] = RunningPeer(name, server, recorders[name])
        try:
            for peer in self._peers.values():
                await peer.server.start(self._startup_timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every peer (concurrently) and forget them. Safe to call twice."""
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(peer.server.stop() for peer in peers))

    async def __aenter__(self) -> DemoPeers:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def serve_peers(
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    *,
    public_base_url: str | None = None,
) -> DemoPeers:
    """The three demo peers, ready for ``async with serve_peers(...) as peers:``.

    Args:
        host: Interface to bind (loopback by default).
        ports: Port per peer name (``fininfo``, ``currenttime``, ``agent``); 0 picks a free
            one. Defaults to ``DEFAULT_PORTS``.
        public_base_url: The agent's base URL as clients see it, i.e. behind the gateway
            (e.g. ``http://127.0.0.1:8080/agents/helper/``); it goes into the agent card.
            None means the agent's direct URL.
    """
    return DemoPeers(host, ports, public_base_url=public_base_url)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound (not yet listening) to ``host:port``; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a fixed dev port be reused right after a previous run (TIME_WAIT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _run_forever(args: argparse.Namespace) -> None:
    ports = {
        "fininfo": args.fininfo_port,
        "currenttime": args.currenttime_port,
        "agent": args.agent_port,
    }
    async with serve_peers(args.host, ports, public_base_url=args.public_base_url) as peers:
        print(f"fininfo      MCP  {peers.fininfo.mcp_url}")
        print(f"currenttime  MCP  {peers.currenttime.mcp_url}")
        print(f"helper       A2A  {peers.agent.base_url}  (card URL {peers.agent_public_url})")
        print("request logs at <peer>/_debug/last-headers; Ctrl-C to stop", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # SIGTERM too, so a supervisor (or a test harness) gets a clean shutdown; and
            # SIGINT explicitly, because a shell starts background jobs with it ignored.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the demo MCP servers and A2A agent.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fininfo-port", type=int, default=DEFAULT_PORTS["fininfo"])
    parser.add_argument("--currenttime-port", type=int, default=DEFAULT_PORTS["currenttime"])
    parser.add_argument("--agent-port", type=int, default=DEFAULT_PORTS["agent"])
    parser.add_argument(
        "--public-base-url",
        default=None,
        help="agent base URL for its card, e.g. http://127.0.0.1:8080/agents/helper/",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_forever(args))


if __name__ == "__main__":
    main()
