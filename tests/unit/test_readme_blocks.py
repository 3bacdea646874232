"""Every command block the README offers to run is run by a test, as written."""

from __future__ import annotations

import subprocess

from tests.e2e.test_readme import BLOCKS_RUN_HERE
from tests.support.readme import (
    CI_MARKER,
    ENVOY_README,
    README,
    ROOT,
    envoy_snippet,
    named_blocks,
    sh_blocks,
)


def test_every_sh_block_is_marked_as_run_by_a_test() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = sh_blocks(text)
    assert len(blocks) >= 8
    for before, body in blocks:
        assert before.startswith("<!-- run as written by tests/e2e/test_readme.py: ") or (
            before == CI_MARKER
        ), f"this README block is not run by any test:\n{body}"


def test_the_named_blocks_are_exactly_the_ones_the_readme_tests_run() -> None:
    assert set(named_blocks(README.read_text(encoding="utf-8"))) == BLOCKS_RUN_HERE


def test_the_readme_test_command_is_what_ci_runs() -> None:
    # The one block no test runs: running the suite from inside the suite would recurse.
    text = README.read_text(encoding="utf-8")
    command = text.split(f"{CI_MARKER}\n```sh\n", 1)[1].split("```", 1)[0].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci.splitlines(), f".ci/run does not run {command!r} as written"
    assert subprocess.run(["bash", "-n", "-c", command], check=False).returncode == 0


def test_both_readmes_give_the_same_envoy_snippet() -> None:
    assert envoy_snippet(ENVOY_README) == envoy_snippet(README)
