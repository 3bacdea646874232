"""The README, run as written: every command block it presents as something to run.

All of it happens in one fresh copy of the working tree, set up by the README's own
bring-up command (`python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' ...`), with
the venv never activated, relative paths and default flags. The ports are the documented
defaults (8080, 9001, 9464, 4317 ...), so the tests that hold them run one after another
and stop what they started.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from policy_service.dev.stack import DevPorts, write_dev_files
from tests.support.envoy import EnvoyProcess, free_port, validate_config
from tests.support.otlp import OtlpReceiver
from tests.support.readme import (
    ENVOY_README,
    README,
    ROOT,
    Background,
    block,
    copy_working_tree,
    envoy_snippet,
    new_terminal_env,
    output_block_after,
    run_block,
)

pytestmark = pytest.mark.e2e

# The blocks this module runs; tests/unit/test_readme_blocks.py checks that every ```sh
# block of the README is one of these (or the test command, which .ci/run runs).
BLOCKS_RUN_HERE = frozenset(
    {"bring-up", "first-call", "challenge", "tracing", "walkthrough", "explain", "serve-for-envoy"}
)

BRING_UP_RUNS = " && .venv/bin/policy-service dev"
DEV_READY = "The gateway is up."
SERVING = "serving ext_authz on 127.0.0.1:9001"
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
INSTALL_SECONDS = 900  # a cold pip cache downloads Envoy, grpcio and the SDKs


@pytest.fixture(scope="session")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the working tree, installed by the README's bring-up command."""
    root = copy_working_tree(tmp_path_factory.mktemp("fresh-clone") / "policy-service")
    bring_up = block("bring-up").strip()
    assert bring_up.endswith(BRING_UP_RUNS), bring_up
    # Everything but the last step, which runs until Ctrl-C: the test of the bring-up
    # runs the whole line again (pip then finds everything installed).
    installed = run_block(bring_up.removesuffix(BRING_UP_RUNS), root, timeout=INSTALL_SECONDS)
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    assert (root / ".venv" / "bin" / "policy-service").exists()
    return root


def mcp_result(output: str) -> dict[str, Any]:
    """The JSON-RPC message of an MCP answer, whether it came as JSON or as one SSE event."""
    data = [line.removeprefix("data:").strip() for line in output.splitlines()]
    for candidate in (output.strip(), *data):
        try:
            message = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(message, dict) and "jsonrpc" in message:
            return message
    raise AssertionError(f"no JSON-RPC message in:\n{output}")


def assert_quote_for_acme(output: str) -> None:
    message = mcp_result(output)
    assert "error" not in message, message
    result = message["result"]
    assert result.get("isError") is not True, result
    text = json.dumps(result)
    assert "ACME" in text, result


class TestTheDevStack:
    """The bring-up command, then what the README says to do in another terminal."""

    @pytest.fixture(scope="class")
    @classmethod
    def dev(cls, clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
        log = tmp_path_factory.mktemp("dev") / "dev.log"
        stack = Background(block("bring-up"), clone, log)
        try:
            stack.wait_for(DEV_READY, timeout=INSTALL_SECONDS)
            yield stack
        finally:
            status = stack.interrupt()
        assert status == 0, stack.output[-4000:]
        assert "stopped." in stack.output

    def test_the_first_call_returns_the_tools_result(self, dev: Background, clone: Path) -> None:
        result = run_block(block("first-call"), clone)
        assert result.returncode == 0, result.stderr
        assert_quote_for_acme(result.stdout)

    def test_a_call_without_a_token_is_challenged_and_the_challenge_resolves(
        self, dev: Background, clone: Path
    ) -> None:
        result = run_block(block("challenge"), clone)
        assert result.returncode == 0, result.stderr
        status_line, challenge, document = result.stdout.split("\n", 2)
        status_line, challenge = status_line.strip(), challenge.strip()
        assert status_line.startswith("HTTP/1.1 401"), result.stdout
        metadata_url = f"{DEFAULT_GATEWAY}/.well-known/oauth-protected-resource/fininfo/mcp"
        assert challenge.lower().startswith("www-authenticate: bearer")
        assert f'resource_metadata="{metadata_url}"' in challenge
        served = json.loads(document)
        assert served["resource"] == f"{DEFAULT_GATEWAY}/fininfo/mcp"

    def test_the_hints_it_prints_work_without_an_activated_venv(
        self, dev: Background, clone: Path
    ) -> None:
        banner = dev.output.split(DEV_READY, 1)[1]
        token_hint = next(
            line.strip() for line in banner.splitlines() if line.strip().startswith("TOKEN=$(")
        )
        assert token_hint.startswith("TOKEN=$(.venv/bin/policy-service token "), token_hint
        curl_hint = banner.split("Call a tool with curl", 1)[1].split("\n", 1)[1]
        curl_hint = curl_hint.split("\n\n", 1)[0]
        result = run_block(f"{token_hint}\n{curl_hint}", clone)
        assert result.returncode == 0, result.stderr
        assert_quote_for_acme(result.stdout)
        api_key_file = re.search(r"A dev API key .* is in (\S+);", banner.replace("\n", " "))
        assert api_key_file is not None, banner
        assert (clone / api_key_file.group(1)).is_file()


def test_the_tracing_command_traces_envoy_and_the_service_in_one_trace(
    clone: Path, tmp_path: Path
) -> None:
    command = block("tracing").strip()
    endpoint = re.match(r"OTEL_EXPORTER_OTLP_ENDPOINT=http://127\.0\.0\.1:(\d+) ", command)
    assert endpoint is not None, command
    # A fresh `pip install` leaves xds-protos' copy of the OTel modules; the service must
    # put opentelemetry-proto's back by itself, with no step of the user's.
    check = run_block(".venv/bin/python -m policy_service.otel.protos --check", clone)
    clobbered = check.returncode == 1
    with OtlpReceiver(port=int(endpoint.group(1))) as receiver:
        stack = Background(command, clone, tmp_path / "dev.log")
        try:
            stack.wait_for(DEV_READY, timeout=180)
            assert "Envoy and the policy service export spans" in stack.output
            if clobbered:
                assert "reinstalled opentelemetry-proto==" in stack.output, stack.output
            called = run_block(block("first-call"), clone)
            assert_quote_for_acme(called.stdout)
            spans = receiver.wait_for(
                lambda spans: {"envoy", "policy-service"} <= {s.service_name for s in spans},
                timeout=30,
            )
        finally:
            assert stack.interrupt() == 0, stack.output[-4000:]
    check_spans = [s for s in spans if s.name == "envoy.service.auth.v3.Authorization/Check"]
    assert check_spans, [(s.service_name, s.name) for s in spans]
    envoy_traces = {s.trace_id for s in spans if s.service_name == "envoy"}
    assert check_spans[0].trace_id in envoy_traces


@dataclass(frozen=True)
class Home:
    """The walkthrough's home folder, outside the repository: ``~/my-policy``, ``~/my-keys``."""

    path: Path
    clone: Path

    @property
    def policy(self) -> Path:
        return self.path / "my-policy"

    @property
    def env(self) -> dict[str, str]:
        # Its own home, and the clone's venv on PATH as the walkthrough's first line puts it
        # (later blocks run in the same terminal).
        path = f"{self.clone / '.venv' / 'bin'}{os.pathsep}{new_terminal_env()['PATH']}"
        return {"HOME": str(self.path), "PATH": path}


@pytest.fixture
def home(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home folder of its own for the walkthrough, outside the clone, gone with the test."""
    folder = tmp_path_factory.mktemp("home")
    assert not folder.resolve().is_relative_to(clone.resolve())
    return Home(folder, clone)


def metric(name: str) -> str:
    body = httpx.get("http://127.0.0.1:9464/metrics", timeout=10).text
    return "\n".join(line for line in body.splitlines() if line.startswith(name))


def test_the_security_walkthrough_takes_an_edit_live_and_refuses_a_tampered_bundle(
    clone: Path, home: Home, tmp_path: Path
) -> None:
    walkthrough = block("walkthrough")
    lines = walkthrough.strip().splitlines()
    assert lines[0].startswith(". .venv/bin/activate")
    assert lines[1].startswith("cp -r examples/finance ~/my-policy && cd ~/my-policy")
    assert lines[-1].rstrip().endswith("&"), "the walkthrough's last line serves in the background"
    my_policy = home.policy
    # As pasted into a terminal that stays open: the shell waits for the background serve.
    # Its home is outside the repository, so the policy folder is too.
    session = Background(
        walkthrough + "wait\n", clone, tmp_path / "walkthrough.log", {"HOME": str(home.path)}
    )
    try:
        session.wait_for(SERVING, timeout=120)
        output = session.output
        assert "bundle.yaml: ok (revision finance-2026-11-21" in output
        assert output.count("11 passed, 0 failed") == 2, output  # test, then sign's own run
        assert (my_policy / "bundle.yaml.sig").is_file()
        # The key pair lives outside the policy folder, so it can never ship with the bundle.
        assert (home.path / "my-keys" / "signing.key").is_file()
        assert not [path for path in my_policy.rglob("*") if path.suffix in (".key", ".pub")]
        # Editors find the schemas wherever the folder lives: beside it, by a plain name.
        for name, schema in (("bundle.yaml", "bundle"), ("bundle.cases.yaml", "cases")):
            first = (my_policy / name).read_text().splitlines()[0]
            assert first == f"# yaml-language-server: $schema={schema}.schema.json", first
            assert json.loads((my_policy / f"{schema}.schema.json").read_text())
        assert 'revision="finance-2026-11-21"' in metric("policy_service_bundle_info")

        # Then, as the README says: edit, and run lint, test and sign again.
        resign = "\n".join(line.split("  #", 1)[0] for line in lines[4:7])
        assert [line.split()[1] for line in resign.splitlines()] == ["lint", "test", "sign"]
        bundle = my_policy / "bundle.yaml"
        bundle.write_text(
            bundle.read_text()
            .replace("revision: finance-2026-11-21", "revision: finance-2026-11-22")
            .replace("args.quantity > 1000", "args.quantity > 500")
        )
        signed = run_block(resign, my_policy, env=home.env)
        assert signed.returncode == 0, signed.stdout + signed.stderr
        session.wait_for(
            "bundle revision finance-2026-11-21 -> finance-2026-11-22 loaded from bundle.yaml"
        )

        # Tampering: an edit after signing, letting analysts trade.
        bundle.write_text(bundle.read_text().replace("scopes: [fininfo:trade]", "scopes: []"))
        session.wait_for(
            "bundle reload refused, still serving revision finance-2026-11-22: bundle.yaml: "
            "file 'bundle.yaml' has changed since it was signed"
        )
        assert 'revision="finance-2026-11-22"' in metric("policy_service_bundle_info")
        loads = metric("policy_service_bundle_loads_total")
        assert re.search(r'result="failed"\} 1\.0', loads), loads
        assert re.search(r'result="ok"\} 2\.0', loads), loads

        # And sign, as the README says, refuses that edit: a case of the bundle's fails.
        refused = run_block(lines[6].split("  #", 1)[0], my_policy, env=home.env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr == (
            "policy-service sign: 1 policy test case fails, so bundle.yaml was not signed; see "
            "policy-service test bundle.yaml (or sign with --skip-tests to sign it anyway)\n"
        )
        assert refused.stderr.strip() in README.read_text().replace("`", "")
    finally:
        # A shell starts background jobs with SIGINT ignored: SIGTERM, as a supervisor would.
        session.terminate()


def test_explain_prints_what_the_readme_shows(clone: Path, home: Home) -> None:
    copied = run_block("cp -r examples/finance ~/my-policy", clone, env=home.env)
    assert copied.returncode == 0, copied.stderr
    result = run_block(block("explain"), home.policy, env=home.env)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = output_block_after("explain").splitlines()
    assert len(shown) > 5
    for line in shown:
        if line.strip() == "...":
            continue
        # "…" stands for what differs per run (a bucket key's hash): the text before it.
        expected = line.split("…", 1)[0]
        assert expected in result.stdout, (
            f"README shows {line!r}; explain printed:\n{result.stdout}"
        )


def test_the_envoy_snippet_works_pasted_into_an_envoy_with_the_documented_service(
    clone: Path, tmp_path: Path
) -> None:
    readme_snippet = envoy_snippet(README)
    assert envoy_snippet(ENVOY_README) == readme_snippet, "the two READMEs' snippets differ"
    snippet = yaml.safe_load(readme_snippet)
    assert set(snippet) == {"http_filters", "routes", "clusters"}

    # The bundle the README serves: the dev stack's, as `policy-service dev` writes it.
    write_dev_files(clone / ".dev-stack", DevPorts())
    fininfo_port = free_port()
    # The user's own MCP server behind their own route: the demo fininfo server.
    peers = Background(
        f"exec {sys.executable} -m policy_service.dev.peers --fininfo-port {fininfo_port} "
        f"--currenttime-port {free_port()} --agent-port {free_port()}",
        ROOT,
        tmp_path / "peers.log",
    )
    service = Background(block("serve-for-envoy"), clone, tmp_path / "serve.log")
    try:
        peers.wait_for("Ctrl-C to stop", timeout=60)
        config = minimal_envoy_with(snippet, fininfo_port=fininfo_port)
        validate_config(config)
        service.wait_for(SERVING, timeout=60)
        with EnvoyProcess(config) as envoy:
            drive_through(envoy, clone)
    finally:
        assert service.interrupt() == 0, service.output[-4000:]
        peers.terminate()


def minimal_envoy_with(snippet: dict[str, Any], *, fininfo_port: int) -> dict[str, Any]:
    """The smallest Envoy around the snippet: one listener, and the user's own cluster."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": snippet["routes"]}]
        },
        "http_filters": snippet["http_filters"],
    }
    listener = {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    fininfo = {
        "name": "fininfo",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "fininfo",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": fininfo_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [*snippet["clusters"], fininfo]},
    }


def drive_through(envoy: EnvoyProcess, clone: Path) -> None:
    listeners = json.loads(envoy.admin_get("/listeners?format=json"))
    address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
    base = f"http://127.0.0.1:{address['port_value']}"
    minted = run_block(
        ".venv/bin/policy-service token --upstream fininfo --scope fininfo:read", clone
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "get_quote",
            "arguments": {"symbol": "ACME"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "get_quote",
    }
    with httpx.Client(base_url=base, timeout=15) as client:
        allowed = client.post(
            "/fininfo/mcp", json=call, headers={**headers, "authorization": f"Bearer {token}"}
        )
        assert allowed.status_code == 200, allowed.text
        assert_quote_for_acme(allowed.text)

        denied = client.post("/fininfo/mcp", json=call, headers=headers)
        assert denied.status_code == 401, denied.text
        assert denied.json()["id"] == 7
        challenge = denied.headers["www-authenticate"]
        found = re.search(r'resource_metadata="([^"]+)"', challenge)
        assert found is not None, challenge
        # The document's path, asked of this Envoy: the catch-all route must answer it.
        path = httpx.URL(found.group(1)).path
        assert path == "/.well-known/oauth-protected-resource/fininfo/mcp"
        document = client.get(path)
        assert document.status_code == 200, document.text
        assert document.json()["resource"].endswith("/fininfo/mcp")

        # Anything else on the catch-all is refused by the service, not passed on.
        assert client.get("/elsewhere").status_code == 404

        # The response side: a list shows this read-only caller only what it may call.
        meta = {"_meta": call["params"]["_meta"]}  # type: ignore[index]
        listing = {"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": meta}
        list_headers = {key: value for key, value in headers.items() if key != "mcp-name"}
        listed = client.post(
            "/fininfo/mcp",
            json=listing,
            headers={
                **list_headers,
                "mcp-method": "tools/list",
                "authorization": f"Bearer {token}",
            },
        )
        assert listed.status_code == 200, listed.text
        names = set(re.findall(r'"name":\s*"([a-z_]+)"', listed.text))
        assert "get_quote" in names
        assert "place_trade" not in names  # the trade scope is missing
