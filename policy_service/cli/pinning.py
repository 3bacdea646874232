"""The ``pin`` command: approve an MCP server's tool definitions as they are now.

policy-service pin --url URL --upstream NAME --output FILE [--header 'Name: value' ...]
                   [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service.errors import ConfigError

if TYPE_CHECKING:
    from policy_service.cli.flags import Commands


def register(commands: Commands) -> None:
    pin = commands.add_parser(
        "pin",
        help="write (or check) the pins file of an upstream's tool definitions",
        description="List the tools of the MCP server at --url with the MCP SDK and write "
        "their definitions and hashes to --output, the file a bundle names under an "
        "upstream's responses.pins.file. It says which tools are new, changed or gone since "
        "the file was last written; review that, then sign the bundle.",
    )
    pin.add_argument("--url", required=True, help="the MCP endpoint, e.g. http://host:9101/mcp")
    pin.add_argument("--upstream", required=True, help="the bundle's name for this upstream")
    pin.add_argument("--output", required=True, type=Path, help="the pins file to write")
    pin.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for the server (repeatable); a value of $VAR is read from that "
        "environment variable, so a token stays off the command line",
    )
    pin.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the server's tools differ from the file",
    )
    pin.set_defaults(run=_cmd_pin)


def _cmd_pin(args: argparse.Namespace) -> int:
    from policy_service.authoring.pinning import existing_hashes, list_server_tools, pin_set

    headers = _headers(args.header)
    # The HTTP client logs every request at INFO; this command says what it did itself.
    for name in ("httpx", "httpx2", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        tools = asyncio.run(list_server_tools(args.url, headers))
    except ConfigError:
        raise
    except Exception as exc:  # the SDK's errors: name the kind, never a header value
        raise ConfigError(f"cannot list the tools of {args.url} ({type(exc).__name__})") from None
    pins = pin_set(args.upstream, tools)
    changes = pins.changes_from(existing_hashes(args.output))
    print(f"upstream {args.upstream}: {len(pins.tools)} tools; {changes.summary()}")
    if args.check:
        return 1 if changes.any else 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(pins.render(args.url), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


def _headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for text in values:
        name, colon, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name:
            raise ConfigError(f"--header must look like 'Name: value' (got a header {name!r})")
        if value.startswith("$"):
            variable = value[1:]
            if variable not in os.environ:
                raise ConfigError(f"--header {name}: ${variable} is not set")
            value = os.environ[variable]
        headers[name] = value
    return headers
