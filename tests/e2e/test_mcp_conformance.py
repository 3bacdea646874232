"""The official MCP conformance suite, run through the gateway.

``@modelcontextprotocol/conformance`` (npm; Node 22 or later) acts as an MCP client and runs
its server scenarios against one URL. It runs here against one server
(``tests/support/conformance_server.py``, built on the official ``mcp`` SDK) three ways:

* **direct**: the server's own URL: what the server does;
* **plain proxy**: the same Envoy config the gateway uses, minus ext_authz: what any proxy
  in between does;
* **gateway**: real Envoy, real ext_authz and the real ``policy-service serve``, on a route
  whose bundle admits one API key and the methods, tools, resources and prompts the suite
  uses. The suite cannot send a credential, so this test's Envoy adds the key (``x-api-key``)
  to every request before ext_authz sees it.

A scenario's result is the status of each of its checks (SUCCESS, FAILURE, WARNING), read
from the ``checks.json`` the CLI writes per scenario with ``--output-dir``. What must hold:
every scenario ends the same through the gateway as it does directly. A scenario whose
result changes through *any* proxy (the plain one too) is not the gateway's doing; such
scenarios are listed in ``PROXY_DIFFERENCES`` with the reason, the gateway must match the
plain proxy on them, and each must really differ direct-vs-proxy (so the list cannot go
stale). The list is empty: with the server sending its sampling and elicitation requests on
the tool call's own stream, all 32 scenarios end the same all three ways.

Revisions: the pinned suite has server scenarios for 2025-11-25 (32 of them) and none for
2026-07-28, which its CLI does not know; a test pins that, so a suite that gains them fails
here until the revision is added to ``RUNNABLE_REVISIONS``.

The suite and Node come from the npm registry into ``.ci/node`` (``.ci/run`` installs
them); without them these tests fail and say how to install them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from policy_service.binaries import terminate
from policy_service.gateway.bootstrap import render_envoy_config
from policy_service.gateway.clusters import AUTHZ_CLUSTER
from policy_service.gateway.filters import EXT_AUTHZ_FILTER
from policy_service.gateway.layout import AuthzEndpoint, EnvoyLayout, UpstreamRoute
from policy_service.identity.apikeys import hash_api_key
from tests.support.envoy import EnvoyProcess, free_port
from tests.support.serve import serve_command, serving

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_PREFIX = REPO_ROOT / ".ci" / "node"
SUITE_PACKAGE = NODE_PREFIX / "node_modules" / "@modelcontextprotocol" / "conformance"
# Pinned together with the install lines in .ci/run. The scenario lists, PROXY_DIFFERENCES
# and the revision notes below were checked against exactly this version.
SUITE_VERSION = "0.1.16"
NODE_VERSION = "22.23.3"
MIN_NODE_MAJOR = 22  # the suite calls fs.globSync, new in Node 22
INSTALL_COMMAND = (
    "npm install --no-audit --no-fund --save-exact --prefix .ci/node "
    f"node@{NODE_VERSION} @modelcontextprotocol/conformance@{SUITE_VERSION}"
)

# Revisions whose server scenarios this suite version can run. The suite's client is the
# TypeScript SDK's, which speaks 2025-11-25 at most, and its CLI knows no later date (see
# test_suite_has_no_server_scenarios_for_2026_07_28).
RUNNABLE_REVISIONS = ("2025-11-25",)
# A suite run that ran fewer scenarios, or passed fewer, than this is broken, not green.
MIN_SCENARIOS = 25

# Scenarios whose result differs between direct and the plain proxy (so through any proxy),
# with the reason. The gateway must give the plain proxy's result on them; each must really
# differ, or test_plain_proxy_differs_from_direct_only_where_listed fails.
PROXY_DIFFERENCES: Mapping[str, str] = {}

API_KEY = "conformance-suite-key-0123456789abcdef"  # test data, known only to this module
PRINCIPAL = "conformance-suite"
ROUTE_PREFIX = "/conformance/"
SERVER_READY_SECONDS = 20.0
SUITE_TIMEOUT_SECONDS = 180.0

BUNDLE = """\
version: v1
revision: conformance-1
api_keys:
  - id: {principal}
    sha256: {key_hash}
    subject: {principal}
    scopes: [conformance:run]
upstreams:
  - name: conformance
    path_prefix: {prefix}
    protocol: mcp
    resource: {resource}
    backend: http://127.0.0.1:{backend_port}
    required_scopes: [conformance:run]
    clients:
      allow: [{principal}]
    # Exactly what the suite's server scenarios call, and nothing more.
    rules:
      - name: session
        methods: [initialize, ping, "notifications/*", logging/setLevel, tools/list,
                  resources/list, resources/templates/list, prompts/list]
      - name: tools
        tools: ["test_*", json_schema_2020_12_tool]
      - name: resources
        resources: ["test://*"]
      - name: prompts
        prompts: ["test_*"]
"""


# -- the suite ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's verdict: its checks' statuses, INFO entries left out.

    INFO checks are the suite's own trace (requests sent, events seen); their number
    depends on timing, never on conformance, so they are not part of the result.
    """

    name: str
    checks: tuple[tuple[str, str], ...]  # (check id, SUCCESS | FAILURE | WARNING), sorted
    errors: tuple[str, ...]  # errorMessage of each FAILURE and WARNING

    @property
    def failed(self) -> bool:
        return any(status == "FAILURE" for _, status in self.checks)

    @property
    def passed(self) -> bool:
        return not self.failed and any(status == "SUCCESS" for _, status in self.checks)

    def describe(self) -> str:
        statuses = ", ".join(f"{check}={status}" for check, status in self.checks) or "no checks"
        errors = "".join(f"\n      {error}" for error in self.errors)
        return f"{statuses}{errors}"


@dataclass(frozen=True)
class SuiteRun:
    url: str
    results: Mapping[str, ScenarioResult]
    output: str  # the CLI's stdout and stderr, for failure messages
    # Through the gateway: how many checks ext_authz made during this run, by outcome.
    authz: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    node: Path
    cli: Path

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        # Everything it talks to is on loopback: no proxy from the environment may step in.
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["NO_COLOR"] = "1"
        return subprocess.run(
            [str(self.node), str(self.cli), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_SECONDS,
            check=False,
        )

    def server_scenarios(self, spec_version: str, cwd: Path) -> list[str]:
        """``conformance list --server --spec-version``: the names, in the suite's order."""
        listed = self.run("list", "--server", "--spec-version", spec_version, cwd=cwd)
        assert listed.returncode == 0, f"conformance list failed:\n{listed.stdout}{listed.stderr}"
        return re.findall(r"^  - (\S+)", listed.stdout, re.MULTILINE)

    def run_server_scenarios(self, url: str, spec_version: str, work: Path) -> SuiteRun:
        """Run every server scenario of ``spec_version`` against ``url``; read checks.json."""
        expected = self.server_scenarios(spec_version, work)
        out = work / "results"
        # --suite all: the "pending" scenarios too (SSE polling, JSON Schema 2020-12), which
        # exercise what a proxy can break: streams and schemas passed through untouched.
        done = self.run(
            "server",
            "--url",
            url,
            "--suite",
            "all",
            "--spec-version",
            spec_version,
            "--output-dir",
            str(out),
            cwd=work,
        )
        output = f"{done.stdout}\n{done.stderr}"
        results = _read_results(out, expected)
        assert results, f"the suite wrote no results for {url}:\n{output}"
        return SuiteRun(url, results, output)


_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T[0-9-]+Z$")


def _read_results(out: Path, expected: list[str]) -> dict[str, ScenarioResult]:
    """One result per scenario in ``expected``, from ``<out>/server-<name>-<time>/checks.json``.

    A scenario that crashed the suite's runner leaves no checks.json; it is reported as a
    FAILURE check named ``no-result`` so that it can never pass unnoticed.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/checks.json")) if out.is_dir() else []:
        match = _RESULT_DIR.match(path.parent.name)
        assert match, f"unexpected result folder {path.parent.name!r}"
        found[match["name"]] = json.loads(path.read_text(encoding="utf-8"))
    unexpected = sorted(set(found) - set(expected))
    assert not unexpected, f"results for scenarios the suite did not list: {unexpected}"
    results = {}
    for name in expected:
        checks = found.get(name)
        if checks is None:
            results[name] = ScenarioResult(name, (("no-result", "FAILURE"),), ("no checks.json",))
            continue
        graded = [c for c in checks if c.get("status") != "INFO"]
        results[name] = ScenarioResult(
            name,
            tuple(sorted((str(c["id"]), str(c["status"])) for c in graded)),
            tuple(str(c["errorMessage"]) for c in graded if c.get("errorMessage")),
        )
    return results


def _node_major(node: Path) -> int | None:
    try:
        version = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except OSError:
        return None
    match = re.match(r"^v(\d+)\.", version)
    return int(match[1]) if match else None


def find_suite() -> Suite:
    """Node 22+ (``.ci/node`` first, then PATH) and the pinned suite, or a loud failure."""
    candidates = [NODE_PREFIX / "node_modules" / ".bin" / "node"]
    on_path = shutil.which("node")
    if on_path:
        candidates.append(Path(on_path))
    seen = []
    node = None
    for candidate in candidates:
        major = _node_major(candidate) if candidate.exists() else None
        seen.append(f"{candidate}: {'missing' if major is None else f'v{major}'}")
        if major is not None and major >= MIN_NODE_MAJOR:
            node = candidate
            break
    if node is None:
        pytest.fail(
            f"the MCP conformance suite needs Node {MIN_NODE_MAJOR} or later "
            f"({'; '.join(seen)}). From the repository root, run: {INSTALL_COMMAND}",
            pytrace=False,
        )
    manifest = SUITE_PACKAGE / "package.json"
    if not manifest.exists():
        pytest.fail(
            f"the MCP conformance suite is not installed ({manifest} is missing). "
            f"From the repository root, run: {INSTALL_COMMAND}",
            pytrace=False,
        )
    package = json.loads(manifest.read_text(encoding="utf-8"))
    if package.get("version") != SUITE_VERSION:
        pytest.fail(
            f"@modelcontextprotocol/conformance {package.get('version')} is installed, these "
            f"tests are written for {SUITE_VERSION}: run {INSTALL_COMMAND}, or move the pins "
            "here and in .ci/run together and re-check PROXY_DIFFERENCES and the revisions",
            pytrace=False,
        )
    cli = SUITE_PACKAGE / str(package["bin"]["conformance"])
    # Run by our node explicitly: the script's "#!/usr/bin/env node" could find an older one.
    return Suite(node, cli)


# -- the server, the plain proxy and the gateway ------------------------------------------


def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"conformance server never listened on {port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def suite() -> Suite:
    return find_suite()


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("conformance-server") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.conformance_server", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_accepting(port, process, log)
        yield port
    finally:
        terminate(process)


def _layout(backend_port: int, listen_port: int, authz_port: int) -> EnvoyLayout:
    return EnvoyLayout(
        upstreams=(UpstreamRoute("conformance", ROUTE_PREFIX, "127.0.0.1", backend_port),),
        authz=(AuthzEndpoint("127.0.0.1", authz_port),),
        plain_port=listen_port,
        tls_port=None,
        admin_port=0,
    )


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    """The HTTP connection manager of the one (plain HTTP) listener."""
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def plain_proxy_config(backend_port: int, listen_port: int) -> dict[str, Any]:
    """The gateway's own Envoy config with ext_authz taken out, and nothing else changed."""
    # The renderer refuses a layout without a policy service; the port is never dialled.
    config = render_envoy_config(_layout(backend_port, listen_port, authz_port=free_port()))
    hcm = _hcm(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != EXT_AUTHZ_FILTER]
    for host in hcm["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.pop("typed_per_filter_config", None)  # ext_authz's per-route settings
    clusters = config["static_resources"]["clusters"]
    clusters[:] = [c for c in clusters if c["name"] != AUTHZ_CLUSTER]
    return config


def gateway_config(backend_port: int, listen_port: int, authz_port: int) -> dict[str, Any]:
    """The gateway's Envoy config, plus one filter that gives every request the suite's key.

    The key must be on the request before ext_authz runs: header_mutation goes ahead of
    ext_authz in the chain (a route's request_headers_to_add would only apply after it).
    """
    config = render_envoy_config(_layout(backend_port, listen_port, authz_port))
    filters = _hcm(config)["http_filters"]
    position = next(i for i, f in enumerate(filters) if f["name"] == EXT_AUTHZ_FILTER)
    filters.insert(
        position,
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [
                        {
                            "append": {
                                "header": {"key": "x-api-key", "value": API_KEY},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        }
                    ]
                },
            },
        },
    )
    return config


@dataclass(frozen=True)
class Proxy:
    url: str  # the MCP endpoint through this proxy
    envoy: EnvoyProcess


@pytest.fixture(scope="module")
def plain_proxy(server_port: int) -> Iterator[Proxy]:
    port = free_port()
    with EnvoyProcess(plain_proxy_config(server_port, port)) as envoy:
        yield Proxy(f"http://127.0.0.1:{port}{ROUTE_PREFIX}mcp", envoy)


@pytest.fixture(scope="module")
def gateway(server_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("conformance-gateway")
    port, authz_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}{ROUTE_PREFIX}mcp"
    bundle = work / "bundle.yaml"
    bundle.write_text(
        BUNDLE.format(
            principal=PRINCIPAL,
            key_hash=hash_api_key(API_KEY),
            prefix=ROUTE_PREFIX,
            # The canonical URI is what clients address; its origin is allowed by default,
            # which is the suite's own Origin in the DNS-rebinding scenario.
            resource=url,
            backend_port=server_port,
        ),
        encoding="utf-8",
    )
    with (
        serving([(authz_port, serve_command(bundle, authz_port))], work),
        EnvoyProcess(gateway_config(server_port, port, authz_port)) as envoy,
    ):
        yield Proxy(url, envoy)


# -- the runs (each once per module and revision, whichever test asks first) --------------


@pytest.fixture(scope="module", params=RUNNABLE_REVISIONS)
def revision(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def direct_run(
    suite: Suite, server_port: int, revision: str, tmp_path_factory: pytest.TempPathFactory
) -> SuiteRun:
    url = f"http://127.0.0.1:{server_port}/mcp"
    return suite.run_server_scenarios(url, revision, tmp_path_factory.mktemp("direct"))


@pytest.fixture(scope="module")
def plain_proxy_run(
    suite: Suite, plain_proxy: Proxy, revision: str, tmp_path_factory: pytest.TempPathFactory
) -> SuiteRun:
    return suite.run_server_scenarios(plain_proxy.url, revision, tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def gateway_run(
    suite: Suite, gateway: Proxy, revision: str, tmp_path_factory: pytest.TempPathFactory
) -> SuiteRun:
    before = _ext_authz_counts(gateway.envoy)
    run = suite.run_server_scenarios(gateway.url, revision, tmp_path_factory.mktemp("gateway"))
    after = _ext_authz_counts(gateway.envoy)
    return replace(run, authz={k: after[k] - before.get(k, 0) for k in after})


def _ext_authz_counts(envoy: EnvoyProcess) -> dict[str, int]:
    """Envoy's ext_authz counters on the listener: ok, denied, error, failure_mode_allowed."""
    prefix = "http.ingress_http.ext_authz.policy."
    counts = {}
    for line in envoy.admin_get("/stats?filter=ext_authz").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.strip().isdigit():
            counts[name.removeprefix(prefix)] = int(value)
    return counts


def _differences(left: SuiteRun, right: SuiteRun, names: Iterable[str]) -> str:
    lines = []
    for name in names:
        a, b = left.results[name], right.results[name]
        if a.checks != b.checks:
            lines.append(
                f"  {name}:\n    {left.url}: {a.describe()}\n    {right.url}: {b.describe()}"
            )
    return "\n".join(lines)


# -- tests --------------------------------------------------------------------------------


def test_direct_run_passes_every_scenario(direct_run: SuiteRun, revision: str) -> None:
    """The yardstick: the server answers every scenario, so a difference is the proxy's."""
    results = direct_run.results
    assert len(results) >= MIN_SCENARIOS, (
        f"only {len(results)} scenarios for {revision}:\n{direct_run.output}"
    )
    failed = {name: r.describe() for name, r in results.items() if r.failed}
    assert not failed, f"scenarios failing against the server itself: {failed}"
    passed = [name for name, r in results.items() if r.passed]
    assert len(passed) >= MIN_SCENARIOS, (
        f"only {len(passed)} scenarios passed a check:\n{direct_run.output}"
    )


def test_gateway_matches_direct(
    direct_run: SuiteRun, plain_proxy_run: SuiteRun, gateway_run: SuiteRun
) -> None:
    """Every scenario ends through the gateway as it does against the server itself."""
    assert gateway_run.results.keys() == direct_run.results.keys()
    usual = [name for name in direct_run.results if name not in PROXY_DIFFERENCES]
    differing = _differences(direct_run, gateway_run, usual)
    assert not differing, f"through the gateway, unlike direct:\n{differing}"
    # Where any proxy changes the result, the gateway must do no worse than a plain proxy.
    differing = _differences(plain_proxy_run, gateway_run, list(PROXY_DIFFERENCES))
    assert not differing, f"through the gateway, unlike the plain proxy:\n{differing}"
    passed = [name for name, r in gateway_run.results.items() if r.passed]
    assert len(passed) >= MIN_SCENARIOS - len(PROXY_DIFFERENCES), gateway_run.output


def test_plain_proxy_differs_from_direct_only_where_listed(
    direct_run: SuiteRun, plain_proxy_run: SuiteRun
) -> None:
    """PROXY_DIFFERENCES is exactly what a proxy without policy changes: no more, no less."""
    names = list(direct_run.results)
    assert plain_proxy_run.results.keys() == direct_run.results.keys()
    differing = {
        name
        for name in names
        if direct_run.results[name].checks != plain_proxy_run.results[name].checks
    }
    evidence = _differences(direct_run, plain_proxy_run, names)
    assert differing == set(PROXY_DIFFERENCES), (
        f"listed in PROXY_DIFFERENCES: {sorted(PROXY_DIFFERENCES)}; differing now: "
        f"{sorted(differing)}\n{evidence}"
    )


def test_gateway_decided_every_request(gateway_run: SuiteRun) -> None:
    """The run really went through ext_authz, with the key: all allowed but one probe.

    The DNS-rebinding scenario's foreign Origin is the one request the policy refuses (403,
    the rejection the scenario wants to see); any other refusal would have changed a
    scenario's result. Counted from Envoy's own ext_authz statistics, before and after.
    """
    authz = gateway_run.authz
    assert authz.get("ok", 0) >= len(gateway_run.results), authz
    assert (authz.get("denied"), authz.get("error")) == (1, 0), authz
    assert authz.get("failure_mode_allowed", 0) == 0, authz


def test_suite_has_no_server_scenarios_for_2026_07_28(suite: Suite, tmp_path: Path) -> None:
    """The pinned suite cannot test 2026-07-28 yet; this fails once a suite version can.

    Its CLI knows the spec versions 2025-03-26, 2025-06-18, 2025-11-25, "draft" and
    "extension"; 2026-07-28 is refused, and "draft" (where scenarios for the next revision
    appear first) has no server scenario. When a newer suite lists some, add the revision
    to RUNNABLE_REVISIONS and rerun.
    """
    refused = suite.run("list", "--server", "--spec-version", "2026-07-28", cwd=tmp_path)
    assert refused.returncode != 0
    assert "Unknown spec version: 2026-07-28" in refused.stderr
    assert suite.server_scenarios("draft", tmp_path) == []
    # And the revision it can run does have scenarios, so the two checks above mean
    # "none for this revision", not "the listing is broken".
    assert len(suite.server_scenarios(RUNNABLE_REVISIONS[-1], tmp_path)) >= MIN_SCENARIOS


def test_ci_installs_the_pinned_versions() -> None:
    """.ci/run installs exactly the Node and suite versions these tests are written for."""
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"node@{NODE_VERSION}" in ci
    assert f"@modelcontextprotocol/conformance@{SUITE_VERSION}" in ci
