"""The README's command blocks, and a fresh copy of the repository to run them in.

A block the README presents as something to run is preceded by
``<!-- run as written by tests/e2e/test_readme.py: NAME -->``; these helpers find it by
name and run it with bash exactly as written: in a copy of the working tree (what a fresh
clone holds), from its root, with the venv the README's own command made and never
activated, and with the environment a new terminal has.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ENVOY_README = ROOT / "envoy" / "README.md"

RUN_MARKER = "<!-- run as written by tests/e2e/test_readme.py: {name} -->"
CI_MARKER = "<!-- run by .ci/run, exactly as written -->"
SNIPPET_MARKER = " ".join(
    (
        "<!-- the snippet for an existing Envoy;",
        "pasted into a real Envoy by",
        "tests/e2e/test_readme.py -->",
    )
)
_MARKED_BLOCK = re.compile(
    r"<!-- run as written by tests/e2e/test_readme\.py: (?P<name>[a-z-]+) -->\n"
    r"```sh\n(?P<body>.*?)```",
    re.DOTALL,
)
_ANY_SH_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```sh\n(?P<body>.*?)```", re.DOTALL)


def sh_blocks(text: str) -> list[tuple[str, str]]:
    """Every ```sh block of a Markdown text, with the line just before it."""
    return [(match["before"], match["body"]) for match in _ANY_SH_BLOCK.finditer(text)]


def named_blocks(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in _MARKED_BLOCK.finditer(text):
        assert match["name"] not in blocks, f"two README blocks are named {match['name']}"
        blocks[match["name"]] = match["body"]
    return blocks


def block(name: str) -> str:
    """The README's block of that name, as written."""
    blocks = named_blocks(README.read_text(encoding="utf-8"))
    assert name in blocks, f"README.md has no block marked {RUN_MARKER.format(name=name)}"
    return blocks[name]


def output_block_after(name: str) -> str:
    """The plain ``` block right after a named block: the output the README shows."""
    text = README.read_text(encoding="utf-8")
    marker = RUN_MARKER.format(name=name)
    after = text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```\n", 1)[1]
    assert after.startswith("```\n"), f"no output block follows the {name} block"
    return after.removeprefix("```\n").split("```", 1)[0]


def envoy_snippet(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert SNIPPET_MARKER in text, f"{path.name} has lost its Envoy snippet marker"
    return text.split(SNIPPET_MARKER, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]


def new_terminal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a new terminal: no venv activated, no test-only variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not key.startswith(("OTEL_", "PYTEST_", "POLICY_SERVICE_"))
    }
    # Drop every venv's bin/ from PATH: `policy-service` must not resolve to the tests' own.
    env["PATH"] = os.pathsep.join(
        entry
        for entry in env.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry).parent / "pyvenv.cfg").exists()
    )
    env.update(extra or {})
    return env


def copy_working_tree(destination: Path) -> Path:
    """What a fresh clone of the working tree holds: tracked and unignored files only."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree, not yet committed
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


def run_block(
    body: str, cwd: Path, *, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a block to its end, as a user pasting it into bash would."""
    return subprocess.run(
        ["bash", "-c", body],
        cwd=cwd,
        env=new_terminal_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Background:
    """A block that keeps running (the dev stack, ``serve``), as in its own terminal."""

    def __init__(self, body: str, cwd: Path, log: Path, env: Mapping[str, str] | None = None):
        self.log = log
        with log.open("wb") as sink:
            # Its own process group: Ctrl-C (SIGINT) reaches every process the block
            # started, as it does in a terminal.
            self.process = subprocess.Popen(
                ["bash", "-c", body],
                cwd=cwd,
                env=new_terminal_env(env),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"exited with {self.process.returncode} before saying {text!r}:\n"
                    f"{self.output[-6000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f}s for {text!r}:\n{self.output[-6000:]}")
            time.sleep(0.1)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the whole group, as a supervisor stops it. Returns the exit status."""
        return self._stop(signal.SIGTERM, timeout)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT to the whole group), then wait. Returns the exit status."""
        return self._stop(signal.SIGINT, timeout)

    def _stop(self, signum: signal.Signals, timeout: float) -> int:
        # SIGKILL if it lingers: a test never leaves a process holding a documented port.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode
