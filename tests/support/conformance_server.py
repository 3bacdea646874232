"""The MCP server that the official conformance suite's server scenarios run against.

``@modelcontextprotocol/conformance`` (``conformance server --url ...``) connects to a server
as a client and calls fixed names: tools such as ``test_simple_text`` or ``test_sampling``,
resources such as ``test://static-text``, prompts such as ``test_prompt_with_arguments``.
Each scenario's description (``dist/index.js`` in the npm package) says what it calls and
what it expects back; this server answers every one of them, built on the low-level server
of the official ``mcp`` SDK so that each answer is exactly what a scenario asks for (a
hand-written input schema, image and audio content, server-to-client requests).

It exists so the suite can run three ways, directly, through a plain Envoy and through the
gateway, and so that a difference between those runs is the proxy's doing, not the server's.

Run it as a process (the end-to-end test does)::

    python -m tests.support.conformance_server --port 8765      # MCP endpoint at /mcp

or in-process: ``build_app()`` is the ASGI app (serve it with
``policy_service.dev.peers.AppServer``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import struct
import warnings
import wave
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from starlette.applications import Starlette

MCP_PATH: Final = "/mcp"
SERVER_NAME: Final = "policy-service-conformance-server"

# The suite's own names (scenario definitions in the npm package), not ours to choose.
JSON_SCHEMA_2020_12_TOOL: Final = "json_schema_2020_12_tool"
JSON_SCHEMA_2020_12: Final = "https://json-schema.org/draft/2020-12/schema"
STATIC_TEXT_URI: Final = "test://static-text"
STATIC_BINARY_URI: Final = "test://static-binary"
WATCHED_URI: Final = "test://watched-resource"
TEMPLATE_URI: Final = "test://template/{id}/data"
_TEMPLATE_PREFIX: Final = "test://template/"
_TEMPLATE_SUFFIX: Final = "/data"

# RFC 5424 severities in the order logging/setLevel compares them.
_LOG_LEVELS: Final[tuple[types.LoggingLevel, ...]] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

# The scenarios wait about 200 ms for notifications; they ask for "~50 ms" between steps.
_STEP_SECONDS: Final = 0.05

Context = ServerRequestContext[Any, Any]


def _png_1x1_red() -> bytes:
    """A valid one-pixel red PNG, built here so no opaque blob sits in the source."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte 0, then one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _wav_silence() -> bytes:
    """A tenth of a second of 8 kHz mono silence: the smallest audio/wav anyone can play."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(b"\x80" * 800)
    return buffer.getvalue()


PNG_BASE64: Final = base64.b64encode(_png_1x1_red()).decode()
WAV_BASE64: Final = base64.b64encode(_wav_silence()).decode()


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")


def _no_arguments() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


def _string_arguments(**descriptions: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": text} for name, text in descriptions.items()
        },
        "required": list(descriptions),
    }


def _tools() -> list[types.Tool]:
    def tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
        return types.Tool(
            name=name, description=description, input_schema=schema or _no_arguments()
        )

    return [
        tool("test_simple_text", "Returns one text block."),
        tool("test_image_content", "Returns a 1x1 PNG image."),
        tool("test_audio_content", "Returns a short WAV clip."),
        tool("test_embedded_resource", "Returns an embedded text resource."),
        tool("test_multiple_content_types", "Returns text, an image and a resource."),
        tool("test_tool_with_logging", "Sends three log notifications while it runs."),
        tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100."),
        tool("test_error_handling", "Always fails with isError."),
        tool(
            "test_sampling",
            "Asks the client's LLM (sampling/createMessage).",
            _string_arguments(prompt="The prompt to send to the LLM"),
        ),
        tool(
            "test_elicitation",
            "Asks the user for input (elicitation/create).",
            _string_arguments(message="The message to show the user"),
        ),
        tool("test_elicitation_sep1034_defaults", "Elicitation with a default for every type."),
        tool("test_elicitation_sep1330_enums", "Elicitation with all five enum shapes."),
        tool("test_reconnection", "Closes its SSE stream mid-call when the transport allows."),
        tool(
            JSON_SCHEMA_2020_12_TOOL,
            "Tool with JSON Schema 2020-12 features",
            {
                "$schema": JSON_SCHEMA_2020_12,
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    }
                },
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": False,
            },
        ),
    ]


class ConformanceServer:
    """The handlers, plus the little state they share (log levels, subscriptions)."""

    def __init__(self) -> None:
        # logging/setLevel is per session; a session that never set one gets everything.
        self._log_levels: dict[str, types.LoggingLevel] = {}
        self.subscriptions: set[str] = set()
        self._tool_handlers: dict[str, Callable[[Context, dict[str, Any]], Awaitable[Any]]] = {
            "test_simple_text": self._simple_text,
            "test_image_content": self._image_content,
            "test_audio_content": self._audio_content,
            "test_embedded_resource": self._embedded_resource,
            "test_multiple_content_types": self._multiple_content_types,
            "test_tool_with_logging": self._with_logging,
            "test_tool_with_progress": self._with_progress,
            "test_error_handling": self._error_handling,
            "test_sampling": self._sampling,
            "test_elicitation": self._elicitation,
            "test_elicitation_sep1034_defaults": self._elicitation_defaults,
            "test_elicitation_sep1330_enums": self._elicitation_enums,
            "test_reconnection": self._reconnection,
            JSON_SCHEMA_2020_12_TOOL: self._json_schema_tool,
        }

    # -- tools ------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=_tools())

    async def call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        handler = self._tool_handlers.get(params.name)
        if handler is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}")
        result = await handler(ctx, params.arguments or {})
        if isinstance(result, types.CallToolResult):
            return result
        return types.CallToolResult(content=result)

    async def _simple_text(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        return [_text("This is a simple text response for testing.")]

    async def _image_content(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        return [_image()]

    async def _audio_content(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        return [types.AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")]

    async def _embedded_resource(
        self, ctx: Context, args: dict[str, Any]
    ) -> list[types.ContentBlock]:
        resource = types.TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return [types.EmbeddedResource(type="resource", resource=resource)]

    async def _multiple_content_types(
        self, ctx: Context, args: dict[str, Any]
    ) -> list[types.ContentBlock]:
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return [
            _text("Multiple content types test:"),
            _image(),
            types.EmbeddedResource(type="resource", resource=resource),
        ]

    async def _with_logging(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        for step, message in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if step:
                await asyncio.sleep(_STEP_SECONDS)
            await self._log(ctx, "info", message)
        return [_text("Tool with logging executed successfully")]

    async def _with_progress(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        # report_progress is a no-op when the request carried no progressToken, as the
        # scenario's description allows ("If no progress token provided, just execute").
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await asyncio.sleep(_STEP_SECONDS)
            await ctx.session.report_progress(progress, 100)
        return [_text("Tool with progress executed successfully")]

    async def _error_handling(self, ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
        # A tool failure is a result with isError, not a JSON-RPC error (tools spec).
        return types.CallToolResult(
            content=[_text("This tool intentionally returns an error for testing")], is_error=True
        )

    async def _sampling(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        prompt = str(args.get("prompt", ""))
        message = types.SamplingMessage(role="user", content=_text(prompt))
        # On this call's own stream: see _elicit.
        reply = await ctx.session.create_message(
            [message], max_tokens=100, related_request_id=ctx.request_id
        )
        content = reply.content
        answer = content.text if isinstance(content, types.TextContent) else str(content)
        return [_text(f"LLM response: {answer}")]

    async def _elicitation(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        reply = await self._elicit(ctx, str(args.get("message", "")), schema)
        return [_text(f"User response: action={reply.action}, content={json.dumps(reply.content)}")]

    async def _elicitation_defaults(
        self, ctx: Context, args: dict[str, Any]
    ) -> list[types.ContentBlock]:
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {
                    "type": "boolean",
                    "description": "Verification status",
                    "default": True,
                },
            },
            "required": [],
        }
        reply = await self._elicit(
            ctx, "Test client default value handling - please accept with defaults", schema
        )
        return [_elicitation_summary(reply)]

    async def _elicitation_enums(
        self, ctx: Context, args: dict[str, Any]
    ) -> list[types.ContentBlock]:
        options = ["option1", "option2", "option3"]
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": options},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {"type": "array", "items": {"type": "string", "enum": options}},
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
            "required": [],
        }
        reply = await self._elicit(ctx, "Pick from each kind of enum", schema)
        return [_elicitation_summary(reply)]

    async def _reconnection(self, ctx: Context, args: dict[str, Any]) -> list[types.ContentBlock]:
        # The SDK offers close_sse_stream only to clients that can resume (2025-11-25 and
        # an event store); the suite's polling scenario posts as 2025-03-26, so this tool
        # usually just answers on the open stream, which the scenario reports as INFO.
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
            await asyncio.sleep(_STEP_SECONDS * 2)
        return [_text("Reconnection test completed successfully")]

    async def _json_schema_tool(
        self, ctx: Context, args: dict[str, Any]
    ) -> list[types.ContentBlock]:
        return [_text(f"Received: {json.dumps(args, sort_keys=True)}")]

    async def _elicit(
        self, ctx: Context, message: str, schema: dict[str, Any]
    ) -> types.ElicitResult:
        # related_request_id sends the request on this tool call's own SSE stream, where the
        # client is listening by construction. Without it the SDK uses the standalone GET
        # stream, which the client opens on its own schedule after initializing; a request
        # sent before that stream is up is lost and the scenario times out. Tried that way,
        # each elicitation scenario failed in roughly one run in four, directly and through
        # either proxy alike: a race in the server, which would make direct and proxied runs
        # differ by chance.
        return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)

    # -- logging ----------------------------------------------------------------------------

    async def set_logging_level(
        self, ctx: Context, params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        self._log_levels[_session_key(ctx)] = params.level
        return types.EmptyResult()

    async def _log(self, ctx: Context, level: types.LoggingLevel, message: str) -> None:
        floor = self._log_levels.get(_session_key(ctx), "debug")
        if _LOG_LEVELS.index(level) < _LOG_LEVELS.index(floor):
            return
        await ctx.session.send_log_message(
            level,
            message,
            logger=SERVER_NAME,
            related_request_id=ctx.request_id,
        )

    # -- completion -------------------------------------------------------------------------

    async def complete(
        self, ctx: Context, params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        candidates = {
            "arg1": ["paris", "park", "party", "test", "testValue1"],
            "arg2": ["world", "testValue2"],
            "id": ["123", "456"],
            "resourceUri": ["test://example-resource", STATIC_TEXT_URI],
        }.get(params.argument.name, [])
        values = [v for v in candidates if v.startswith(params.argument.value)]
        return types.CompleteResult(
            completion=types.Completion(values=values, total=len(values), has_more=False)
        )

    # -- resources --------------------------------------------------------------------------

    async def list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=STATIC_TEXT_URI,
                    name="static-text",
                    description="A static text resource.",
                    mime_type="text/plain",
                ),
                types.Resource(
                    uri=STATIC_BINARY_URI,
                    name="static-binary",
                    description="A static PNG image.",
                    mime_type="image/png",
                ),
                types.Resource(
                    uri=WATCHED_URI,
                    name="watched-resource",
                    description="A resource clients may subscribe to.",
                    mime_type="text/plain",
                ),
            ]
        )

    async def list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            uri_template=TEMPLATE_URI,
            name="template-data",
            description="JSON data for any id.",
            mime_type="application/json",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        self, ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == STATIC_TEXT_URI:
            contents = types.TextResourceContents(
                uri=uri,
                mime_type="text/plain",
                text="This is the content of the static text resource.",
            )
        elif uri == STATIC_BINARY_URI:
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_BASE64)
        elif uri == WATCHED_URI:
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="Watched resource content."
            )
        elif uri.startswith(_TEMPLATE_PREFIX) and uri.endswith(_TEMPLATE_SUFFIX):
            item = uri[len(_TEMPLATE_PREFIX) : -len(_TEMPLATE_SUFFIX)]
            if not item or "/" in item:
                raise _resource_not_found(uri)
            body = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
            contents = types.TextResourceContents(
                uri=uri, mime_type="application/json", text=json.dumps(body)
            )
        else:
            raise _resource_not_found(uri)
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(
        self, ctx: Context, params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        self.subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: Context, params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self.subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    # -- prompts ----------------------------------------------------------------------------

    async def list_prompts(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        def argument(name: str, description: str) -> types.PromptArgument:
            return types.PromptArgument(name=name, description=description, required=True)

        return types.ListPromptsResult(
            prompts=[
                types.Prompt(name="test_simple_prompt", description="A prompt with no arguments."),
                types.Prompt(
                    name="test_prompt_with_arguments",
                    description="A prompt with two arguments.",
                    arguments=[
                        argument("arg1", "First test argument"),
                        argument("arg2", "Second test argument"),
                    ],
                ),
                types.Prompt(
                    name="test_prompt_with_embedded_resource",
                    description="A prompt that embeds a resource.",
                    arguments=[argument("resourceUri", "URI of the resource to embed")],
                ),
                types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
            ]
        )

    async def get_prompt(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        args = params.arguments or {}

        def user(content: types.ContentBlock) -> types.PromptMessage:
            return types.PromptMessage(role="user", content=content)

        if params.name == "test_simple_prompt":
            messages = [user(_text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            arg1, arg2 = _required(args, "arg1"), _required(args, "arg2")
            messages = [user(_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]
        elif params.name == "test_prompt_with_embedded_resource":
            resource = types.TextResourceContents(
                uri=_required(args, "resourceUri"),
                mime_type="text/plain",
                text="Embedded resource content for testing.",
            )
            messages = [
                user(types.EmbeddedResource(type="resource", resource=resource)),
                user(_text("Please process the embedded resource above.")),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [user(_image()), user(_text("Please analyze the image above."))]
        else:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown prompt {params.name!r}")
        return types.GetPromptResult(messages=messages)


def _elicitation_summary(reply: types.ElicitResult) -> types.TextContent:
    return _text(
        f"Elicitation completed: action={reply.action}, content={json.dumps(reply.content)}"
    )


def _required(args: dict[str, str], name: str) -> str:
    value = args.get(name)
    if value is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"argument {name!r} is required")
    return value


def _resource_not_found(uri: str) -> MCPError:
    # resources spec: an unknown resource is -32002 (Resource not found), with the uri.
    return MCPError(code=-32002, message="Resource not found", data={"uri": uri})


def _session_key(ctx: Context) -> str:
    request = ctx.request
    headers = getattr(request, "headers", None)
    session = headers.get("mcp-session-id") if headers is not None else None
    return str(session or "")


def build_server() -> Server[Any]:
    """The low-level MCP server with every handler the suite's scenarios need."""
    handlers = ConformanceServer()
    # logging/setLevel goes through add_request_handler: the constructor argument does the
    # same plus a deprecation warning (logging is deprecated from 2026-07-28 on), and the
    # suite tests it as the 2025-11-25 feature.
    server: Server[Any] = Server(
        SERVER_NAME,
        version="1.0.0",
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_resources=handlers.list_resources,
        on_list_resource_templates=handlers.list_resource_templates,
        on_read_resource=handlers.read_resource,
        on_subscribe_resource=handlers.subscribe,
        on_unsubscribe_resource=handlers.unsubscribe,
        on_list_prompts=handlers.list_prompts,
        on_get_prompt=handlers.get_prompt,
        on_completion=handlers.complete,
    )
    server.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, handlers.set_logging_level
    )
    return server


def build_app() -> Starlette:
    """The Streamable HTTP app, MCP endpoint at ``/mcp``, stateful (sessions on)."""
    return build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        # The suite's dns-rebinding-protection scenario needs a loopback server to refuse a
        # foreign Host/Origin and accept its own. Behind the gateway's Envoy config the Host
        # is rewritten to this server's own address and the Origin passes unchanged, so a
        # foreign Origin is still refused here (and by the gateway before that).
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        ),
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # Sampling and logging are deprecated from 2026-07-28 on, and the SDK warns on every
    # use; the suite's scenarios test them as 2025-11-25 features, which they still are.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
