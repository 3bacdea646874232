"""The ``policy-service`` command: one parser, each group of commands in its own module.

serve                                   the ext_authz gRPC service    (cli.serving)
lint, test, explain, schema, hash-key   writing and checking policy   (cli.authoring)
keygen, sign, verify                    signed bundles                (cli.signing)
pin                                     tool-definition pins          (cli.pinning)
replay                                  recorded checks, decided again (cli.replaying)
dev, token, envoy-config                the dev stack and Envoy       (cli.dev)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import policy_service.cli.authoring as authoring
import policy_service.cli.dev as dev
import policy_service.cli.pinning as pinning
import policy_service.cli.replaying as replaying
import policy_service.cli.serving as serving
import policy_service.cli.signing as signing
from policy_service.cli.flags import finish_help
from policy_service.errors import PolicyServiceError
from policy_service.workers.protocol import worker_label


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policy-service",
        description="policy-service: an Envoy ext_authz policy service for MCP and A2A traffic.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="how much the service logs",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serving, authoring, dev, signing, pinning, replaying):
        group.register(commands)
    finish_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # As given, for `serve --workers N` to start its workers with (argparse keeps no copy).
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    # A worker of `serve --workers N` says which one in every line (the supervisor's own
    # lines, and a single process's, are as they always were).
    worker = worker_label(os.environ)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s "
        + (f"[{worker}] " if worker else "")
        + "%(name)s %(message)s",
    )
    try:
        return int(args.run(args))
    except PolicyServiceError as exc:
        print(f"policy-service {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
