"""``replay``: what a bundle change does to recorded traffic, before it ships.

policy-service replay RECORDING --candidate NEW [--baseline OLD] [--format json]

Exit 0 when no decision or reason changed, 1 when one did (a CI gate), 2 when the recording
or a bundle cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service.errors import PolicyServiceError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from policy_service.authoring.replay import Diff, RecordedCheck
    from policy_service.cli.flags import Commands
    from policy_service.state import BundleState

EXIT_UNCHANGED, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2


def register(commands: Commands) -> None:
    replay = commands.add_parser(
        "replay",
        help="decide recorded checks (serve --record) again and report every change",
        description="Decide every check of a recording (serve --record) under --candidate, "
        "and under --baseline, or without it compare with the decisions recorded, and "
        "report each check whose decision or reason changes. Rate limits, bound sessions "
        "and tool pins depend on traffic, not on the bundle, and are not decided again. "
        f"Exit {EXIT_UNCHANGED}: nothing changed; {EXIT_CHANGED}: something did; "
        f"{EXIT_ERROR}: the recording or a bundle could not be read.",
    )
    replay.add_argument("recording", help="a file that serve --record wrote")
    replay.add_argument(
        "--candidate", required=True, metavar="BUNDLE", help="the bundle to try: file or directory"
    )
    replay.add_argument(
        "--baseline",
        metavar="BUNDLE",
        help="the bundle to compare with (default: the decisions recorded)",
    )
    replay.add_argument(
        "--format", choices=("text", "json"), default="text", help="the report's format"
    )
    replay.set_defaults(run=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from policy_service.authoring.replay import read_recording
    from policy_service.bundles.loader import load_bundle
    from policy_service.state import BundleState

    try:
        checks = read_recording(Path(args.recording))
        candidate = BundleState.from_bundle(load_bundle(args.candidate))
        baseline = BundleState.from_bundle(load_bundle(args.baseline)) if args.baseline else None
        diff = asyncio.run(_replay(checks, candidate, baseline))
    except PolicyServiceError as exc:
        # Not the usual exit 1: that one says "something changed" to a CI gate.
        print(f"policy-service replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        print(json.dumps(diff.as_json(), indent=2))
    else:
        print(diff.report())
    return EXIT_CHANGED if diff.changes else EXIT_UNCHANGED


async def _replay(
    checks: Sequence[RecordedCheck], candidate: BundleState, baseline: BundleState | None
) -> Diff:
    from policy_service.authoring.replay import replay

    try:
        return await replay(checks, candidate, baseline)
    finally:
        # Verifiers are never started (callers are given, not verified); closing is cheap.
        await candidate.jwt.aclose()
        if baseline is not None:
            await baseline.jwt.aclose()
