"""Where ``lint`` and ``test`` send their text and their ``--format`` report."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from policy_service.cli.reports import ReportOutput, percent
from policy_service.errors import ConfigError


def output(format: str, path: Path | None = None) -> ReportOutput:
    return ReportOutput(argparse.Namespace(format=format, output=str(path) if path else None))


def say_both(out: ReportOutput) -> None:
    out.say("a.yaml: ok")
    out.say("b.yaml: broken", error=True)


def test_a_report_on_stdout_replaces_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    out = output("json")
    say_both(out)
    out.finish('{"ok": false}\n')
    shown = capsys.readouterr()
    assert shown.out == '{"ok": false}\n'  # parseable as it stands
    assert shown.err == "b.yaml: broken\n"  # errors still reach the terminal


def test_with_output_the_text_is_printed_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = output("junit", tmp_path / "r.xml")
    say_both(out)
    out.finish("<testsuites />\n")
    assert capsys.readouterr().out == "a.yaml: ok\n"
    assert (tmp_path / "r.xml").read_text() == "<testsuites />\n"


def test_text_to_a_file_holds_every_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = output("text", tmp_path / "r.txt")
    say_both(out)
    out.finish()
    assert capsys.readouterr().out == "a.yaml: ok\n"
    assert (tmp_path / "r.txt").read_text() == "a.yaml: ok\nb.yaml: broken\n"


def test_an_output_that_cannot_be_written_is_a_config_error(tmp_path: Path) -> None:
    out = output("json", tmp_path / "missing" / "r.json")
    with pytest.raises(ConfigError, match=r"^--output .*r\.json: No such file or directory$"):
        out.finish("{}\n")


@pytest.mark.parametrize("text", ["-1", "100.5", "nan", "half"])
def test_min_coverage_must_be_a_percentage(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a percentage from 0 to 100"):
        percent(text)


def test_a_percentage_may_have_a_fraction() -> None:
    assert percent("0") == 0.0
    assert percent("87.5") == 87.5
    assert percent("100") == 100.0
