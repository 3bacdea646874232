"""The README's walkthrough for security teams, run as written: lint, test, sign, verify,
serve; then an edit goes live on the running service and a tampered bundle never does."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.envoy import free_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = (
    "<!-- the walkthrough below is run as written by "
    "tests/integration/test_readme_bundle_flow.py -->"
)
CLI = "../.venv/bin/policy-service"
SETTLE_SECONDS = 30.0


def walkthrough() -> list[str]:
    """The shell lines of the README's walkthrough block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def command(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[0] == CLI, f"the walkthrough runs the CLI from the repository's venv: {line}"
    return [sys.executable, "-m", "policy_service", *words[1:]]


def run(line: str, cwd: Path) -> str:
    result = subprocess.run(
        command(line), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def wait_for(log: Path, text: str) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"waited for {text!r}; log:\n{log.read_text()}"
        time.sleep(0.05)


def metric(port: int, name: str) -> str:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return "\n".join(line for line in body.splitlines() if line.startswith(name))


def test_the_readme_walkthrough_takes_an_edit_live_and_refuses_a_tampered_bundle(
    tmp_path: Path,
) -> None:
    lines = walkthrough()
    copy, *steps, serve = lines
    # "cp -r examples/finance my-policy && cd my-policy"
    assert copy == "cp -r examples/finance my-policy && cd my-policy"
    work = tmp_path / "my-policy"
    shutil.copytree(ROOT / "examples" / "finance", work)
    outputs = [run(step, work) for step in steps]
    assert [step.split()[1] for step in steps] == ["keygen", "lint", "test", "sign", "verify"]
    assert "11 passed, 0 failed" in outputs[2]
    assert (work / "bundle.yaml.sig").is_file()

    assert serve.endswith(" &")
    metrics_port = free_port()
    serve_words = command(
        serve.removesuffix(" &").replace("127.0.0.1:9464", f"127.0.0.1:{metrics_port}")
    )
    serve_words += ["--listen", f"127.0.0.1:{free_port()}", "--audit-log", "off"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(serve_words, cwd=work, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(log, "serving ext_authz on")
        assert 'revision="finance-2026-11-21"' in metric(metrics_port, "policy_service_bundle_info")

        # The edit: a new revision that also lowers the per-order cap.
        bundle = work / "bundle.yaml"
        bundle.write_text(
            bundle.read_text()
            .replace("revision: finance-2026-11-21", "revision: finance-2026-11-22")
            .replace("args.quantity > 1000", "args.quantity > 500")
        )
        for step in steps[1:4]:  # lint, test, sign again
            run(step, work)
        wait_for(
            log, "bundle revision finance-2026-11-21 -> finance-2026-11-22 loaded from bundle.yaml"
        )

        # Tampering: an edit after signing, letting analysts trade.
        bundle.write_text(bundle.read_text().replace("scopes: [fininfo:trade]", "scopes: []"))
        wait_for(
            log,
            "bundle reload refused, still serving revision finance-2026-11-22: bundle.yaml: "
            "file 'bundle.yaml' has changed since it was signed",
        )
        assert 'revision="finance-2026-11-22"' in metric(metrics_port, "policy_service_bundle_info")
        loads = metric(metrics_port, "policy_service_bundle_loads_total")
        assert re.search(r'result="failed"\} 1\.0', loads), loads
        assert re.search(r'result="ok"\} 2\.0', loads), loads
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
