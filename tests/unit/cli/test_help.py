"""Every command says what it does, and every option says what it is and its default."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from policy_service.cli.main import build_parser, main


def commands() -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, summaries.get(name, "")


COMMANDS = sorted(name for name, _, _ in commands())


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse wraps at the terminal's width, and may break a default at a hyphen.
    monkeypatch.setenv("COLUMNS", "2000")


def shown_help(argv: list[str]) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 0
    return " ".join(out.getvalue().split())  # argparse wraps lines; compare words


def test_the_top_level_help_gives_each_command_one_line() -> None:
    text = shown_help(["--help"])
    for name, _, summary in commands():
        assert summary, f"{name} has no one-line help"
        assert "\n" not in summary
        assert " ".join(summary.split()) in text


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_describes_itself_and_every_option(name: str) -> None:
    parser = next(sub for command, sub, _ in commands() if command == name)
    text = shown_help([name, "--help"])
    assert parser.description, f"{name} --help has no description"
    for action in parser._actions:
        if action.dest == "help":
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {label}: no help text"
        if action.option_strings and action.default not in (None, False, []):
            # The default must be visible in the rendered help, in whatever words.
            assert f"default: {action.default}" in text or "(default" in (action.help or ""), (
                f"{name} {label}: the default {action.default!r} is not shown"
            )


def test_dev_help_says_where_state_is_kept() -> None:
    text = shown_help(["dev", "--help"])
    assert "where the dev stack keeps its state" in text
    assert "relative to the current directory (default: .dev-stack)" in text


def test_token_help_gives_the_clock_skew_leeway() -> None:
    text = shown_help(["token", "--help"])
    assert "accepted up to 30 s after exp" in text
