"""A tiny A2A agent for the dev stack: "helper", which answers every message with one line.

Built with ``a2a-sdk`` and served over the JSON-RPC binding (A2A protocol 1.0):

    GET  /.well-known/agent-card.json   the public agent card
    POST /                              JSON-RPC (SendMessage, SendStreamingMessage, GetTask, ...)

The card declares a bearer security scheme, as a real agent behind the gateway would, but the
agent itself checks nothing: authorization is the gateway's job, and the demo must show what
the gateway let through. The card's interface URL is a parameter, because clients must reach
the agent through the gateway (e.g. ``http://127.0.0.1:8080/agents/helper/``), not directly.

Like every demo peer it also serves, for tests only, ``GET /_debug/last-headers`` (see
``policy_service.dev.header_recorder``).

Run it alone with ``python -m policy_service.dev.demo_agent [--host H] [--port P] [--url U]``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from a2a.helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from starlette.applications import Starlette

from policy_service.dev.header_recorder import HeaderRecorder
from policy_service.gateway.demo_topology import HELPER

AGENT_NAME: Final = "helper"
REPLY_PREFIX: Final = "helper says: "
BEARER_SCHEME: Final = "bearer"


def reply_to(text: str) -> str:
    """The agent's whole behaviour: deterministic, so tests can compare exact strings."""
    return f"{REPLY_PREFIX}{text}"


class HelperExecutor(AgentExecutor):
    """Answer each message with a single agent message (no task, no streaming updates)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        answer = new_text_message(
            reply_to(context.get_user_input()),
            context_id=context.context_id,
            task_id=context.task_id,
        )
        await event_queue.enqueue_event(answer)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # Every reply is immediate, so there is never anything running to cancel.
        return None


def build_card(public_url: str) -> AgentCard:
    """The public agent card; ``public_url`` is where clients send JSON-RPC (the gateway)."""
    return AgentCard(
        name=AGENT_NAME,
        description="Demo agent that answers every message with one line of text.",
        version="0.1.0",
        supported_interfaces=[
            AgentInterface(
                url=public_url,
                protocol_binding=TransportProtocol.JSONRPC.value,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        security_schemes={
            BEARER_SCHEME: SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    bearer_format="JWT",
                    description="Access token issued for this agent's audience.",
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={BEARER_SCHEME: StringList()})],
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="echo",
                name="Echo",
                description="Repeats the message back, prefixed with the agent's name.",
                tags=["demo", "echo"],
                examples=["hello"],
            ),
            AgentSkill(
                id="smalltalk",
                name="Small talk",
                description="Answers any short message with a short line.",
                tags=["demo"],
                examples=["how are you?"],
            ),
        ],
    )


def build_app(public_url: str, *, maxlen: int = 50) -> HeaderRecorder:
    """The ASGI app: agent card and JSON-RPC endpoint, wrapped in the header recorder.

    Args:
        public_url: The agent's base URL as clients see it, written into the card; the
            JSON-RPC endpoint is served at ``/`` here whatever path the gateway maps it to.
        maxlen: How many requests the header recorder remembers.
    """
    card = build_card(public_url)
    handler = DefaultRequestHandler(
        agent_executor=HelperExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=card,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        # Drain the handler's active tasks so a stopped peer leaves no stray asyncio tasks.
        await handler.aclose()

    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/"),
    ]
    return HeaderRecorder(Starlette(routes=routes, lifespan=lifespan), maxlen=maxlen)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=HELPER.port)
    parser.add_argument("--url", help="public base URL for the card (default: the direct URL)")
    args = parser.parse_args()
    url = args.url or f"http://{args.host}:{args.port}/"
    uvicorn.run(build_app(url), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
