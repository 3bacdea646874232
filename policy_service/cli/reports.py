"""``--format`` and ``--output`` for ``lint`` and ``test``: where the text and the report go."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policy_service.errors import ConfigError


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("text", "json", "junit"),
        default="text",
        help="the report's format: text for people, json or junit (JUnit XML) for CI "
        "(default: text)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write the report to FILE (the text report is still printed); "
        "default: standard output, in place of the text",
    )


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage from 0 to 100")
    return value


class ReportOutput:
    """Where a command's text goes, and its --format report: the text to the terminal unless
    the report takes standard output (so a CI script can parse it); the report to --output
    or standard output."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.format: str = args.format
        self.output: str | None = args.output
        self.text: list[str] = []

    @property
    def shows_text(self) -> bool:
        return self.format == "text" or self.output is not None

    def say(self, line: str, *, error: bool = False) -> None:
        self.text.append(line)
        if error:
            print(line, file=sys.stderr)  # errors are never held back: stdout is the report's
        elif self.shows_text:
            print(line)

    def finish(self, report: str = "") -> None:
        """Write the json or junit ``report`` to --output or stdout; for text, whose lines
        were said as they came, --output gets those lines."""
        if self.output is None:
            if self.format != "text":
                sys.stdout.write(report)
            return
        try:
            Path(self.output).write_text(
                "\n".join(self.text) + "\n" if self.format == "text" else report,
                encoding="utf-8",
            )
        except OSError as exc:
            raise ConfigError(f"--output {self.output}: {exc.strerror or exc}") from None
