"""Hot reload under load: no failed and no wrongly decided check while the bundle changes.

A real ``policy-service serve`` watches a bundle file while gRPC clients send checks
without pause. The test rewrites the bundle dozens of times: revision A (get_quote
allowed), revision B (get_quote not allowed), and broken ones (bad YAML, an invalid
bundle; with a verification key, a bundle edited after signing and one whose signature was
removed). Half the writes are atomic renames, half truncate the file and write it in
place, some in two steps with a pause, as editors do.

Each write is followed until the service has taken it in: a good one until /metrics shows
its revision serving (and the clients have been answered under it), a broken one until the
refusal counter has moved. That makes the counts exact: every write is noticed once,
since a change is read only after it held still for one poll, and never read twice.

Then every answer is joined to its audit event by decision id, and must be exactly what
the revision in that event decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.loader import load_bundle_files
from policy_service.bundles.signing import BundleSigningKey, generate_signing_key, sign_bundle
from tests.integration.test_audit_concurrency import decision_id_of, read_events
from tests.support.bundles import TestBundle, write_test_bundle
from tests.support.checks import check_request
from tests.support.envoy import free_port
from tests.support.serve import serve_command, serving

POLL_SECONDS = 0.2
CLIENTS = 6
# A bound on waiting for the service to take a write in, so a bug fails instead of hanging.
SETTLE_SECONDS = 30.0
# Answers to collect under each good revision before the next write: enough that every
# revision is seen serving, whatever the machine's speed.
ANSWERS_PER_REVISION = 4 * CLIENTS


class Kind(enum.Enum):
    GET_QUOTE = "get_quote"  # allowed in A, not in B
    LIST_SYMBOLS = "list_symbols"  # allowed in both
    PLACE_TRADE = "place_trade"  # refused in both: the token lacks fininfo:trade


def expected_reason(kind: Kind, revision: str) -> str:
    family = revision.split("-")[0]
    assert family in ("A", "B"), f"a check was decided under revision {revision!r}"
    if kind is Kind.PLACE_TRADE:
        return "insufficient_scope"
    if kind is Kind.GET_QUOTE and family == "B":
        return "no_matching_rule"
    return "allowed"


def good_text(template: str, revision: str) -> str:
    text = template.replace("revision: test-1", f"revision: {revision}")
    if revision.startswith("B-"):
        text = text.replace("tools: [get_quote, list_symbols]", "tools: [list_symbols]")
    assert text != template
    return text


def broken_text(template: str, revision: str) -> str:
    return good_text(template, f"A-{revision}") + "upstreams: [\n"  # YAML ends mid-list


def invalid_text(template: str, revision: str) -> str:
    # Shape-valid YAML that means nothing: the loader's meaning pass refuses it.
    return good_text(template, f"A-{revision}").replace("protocol: mcp\n", "protocol: ftp\n", 1)


# --- writing the way editors and tools do -------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_bytes(data)
    os.replace(staged, path)


def write_in_place(path: Path, data: bytes, *, in_two_steps: bool) -> None:
    with path.open("wb") as handle:  # truncates: for a moment the file is empty
        if in_two_steps:
            # Cut inside a YAML flow list, so the half-written file is not even YAML: were
            # it ever read, it would show as an extra refusal and fail the exact count.
            cut = data.index(b"tools: [") + 10
            handle.write(data[:cut])
            handle.flush()
            # Shorter than a poll, so never stable for one; long enough that a poll often
            # lands in it, and reading what it saw would be caught.
            time.sleep(POLL_SECONDS * 0.4)
            data = data[cut:]
        handle.write(data)


def write(path: Path, data: bytes, index: int) -> None:
    if index % 2 == 0:
        write_atomic(path, data)
    elif index % 4 == 1:
        # The test writes right after it saw the service take the last write in, which is
        # just after a poll; without an offset every pause would fall between two polls.
        # Golden-ratio steps spread the offsets evenly over a poll interval.
        time.sleep(POLL_SECONDS * ((index * 0.618) % 1))
        write_in_place(path, data, in_two_steps=True)
    else:
        write_in_place(path, data, in_two_steps=False)


# --- the clients and the service's metrics -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    kind: Kind
    decision_id: str
    allowed: bool


class Load:
    """gRPC clients checking without pause until stopped; every answer and error kept."""

    def __init__(self, port: int, bundle: TestBundle) -> None:
        token = bundle.token("fininfo:read")
        headers = {
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
            "authorization": f"Bearer {token}",
        }
        self.requests = {
            kind: check_request(
                headers=headers,
                body={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": kind.value},
                },
            )
            for kind in Kind
        }
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(index)) for index in range(CLIENTS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.channel.close(grace=None)

    async def _client(self, index: int) -> None:
        kinds = list(Kind)
        turn = index
        while not self._stop.is_set():
            kind = kinds[turn % len(kinds)]
            turn += 1
            try:
                response: external_auth_pb2.CheckResponse = await self.stub.Check(
                    self.requests[kind], timeout=10
                )
            except grpc.RpcError as exc:
                self.errors.append(f"{kind.value}: {exc.code()}")
                continue
            self.answers.append(
                Answer(kind, decision_id_of(response), response.HasField("ok_response"))
            )

    async def more_answers(self, count: int) -> None:
        target = len(self.answers) + count
        await until(lambda: len(self.answers) >= target, f"{count} more answers")


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {SETTLE_SECONDS}s for {what}")
        await asyncio.sleep(0.02)


@dataclasses.dataclass
class Scrape:
    revision: str
    loads: dict[str, float]


async def scrape(http: httpx.AsyncClient, port: int) -> Scrape:
    response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    revision, loads = "", {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "policy_service_bundle_info" and sample.value == 1:
                revision = sample.labels["revision"]
            if sample.name == "policy_service_bundle_loads_total":
                loads[sample.labels["result"]] = sample.value
    return Scrape(revision, loads)


class Service:
    """What the test watches of the service: /metrics, polled until a write is taken in."""

    def __init__(self, http: httpx.AsyncClient, metrics_port: int, load: Load) -> None:
        self.http = http
        self.port = metrics_port
        self.load = load
        self.last = Scrape("", {})

    async def _settle(self, condition: Callable[[Scrape], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            self.last = await scrape(self.http, self.port)
            if condition(self.last):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"waited {SETTLE_SECONDS}s for {what}; metrics say {self.last}")
            await asyncio.sleep(0.02)

    async def serving(self, revision: str) -> None:
        await self._settle(lambda now: now.revision == revision, f"revision {revision}")
        await self.load.more_answers(ANSWERS_PER_REVISION)

    async def refused(self, count: int, serving: str) -> None:
        await self._settle(lambda now: now.loads.get("failed", 0) >= count, f"refusal {count}")
        assert self.last.loads["failed"] == count, "one write, one refusal"
        assert self.last.revision == serving


# --- the joins ---------------------------------------------------------------------------


def check_answers(
    answers: list[Answer], events: list[dict[str, object]], good: list[str]
) -> Counter[str]:
    """Every answer against its audit event; the revisions answered under, counted."""
    by_id = {str(event["decision_id"]): event for event in events}
    assert len(by_id) == len(events)
    revisions: Counter[str] = Counter()
    for answer in answers:
        event = by_id[answer.decision_id]
        revision = str(event["bundle_revision"])
        reason = expected_reason(answer.kind, revision)
        assert event["reason"] == reason, (answer, event)
        assert answer.allowed == (reason == "allowed"), (answer, event)
        revisions[revision] += 1
    assert set(revisions) == set(good), "exactly the good revisions answered, each of them"
    return revisions


def refusal_lines(log: Path) -> list[str]:
    marker = "bundle reload refused, still serving revision "
    return [line.split(marker, 1)[1] for line in log.read_text().splitlines() if marker in line]


# --- the tests ---------------------------------------------------------------------------


async def test_reloads_under_load_never_fail_or_misdecide_a_check(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    template = bundle.path.read_text()
    bundle.path.write_text(good_text(template, "A-0"))
    port, metrics_port = free_port(), free_port()
    audit_log = tmp_path / "audit.jsonl"
    command = serve_command(
        bundle.path,
        port,
        "--audit-log",
        str(audit_log),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--poll-interval",
        str(POLL_SECONDS),
    )
    # Six kinds of write, six times over: A, B, bad YAML, A, B, an invalid bundle.
    plan = ["A", "B", "broken", "A", "B", "invalid"] * 6
    good, broken = ["A-0"], 0

    with serving([(port, command)], tmp_path):
        load = Load(port, bundle)
        load.start()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                service = Service(http, metrics_port, load)
                await service.serving("A-0")
                for index, kind in enumerate(plan, start=1):
                    revision = f"{kind}-{index}"
                    if kind in ("A", "B"):
                        write(bundle.path, good_text(template, revision).encode(), index)
                        await service.serving(revision)
                        good.append(revision)
                    else:
                        make = broken_text if kind == "broken" else invalid_text
                        write(bundle.path, make(template, revision).encode(), index)
                        broken += 1
                        await service.refused(broken, serving=good[-1])
                final = await scrape(http, metrics_port)
        finally:
            await load.stop()

    assert load.errors == []
    assert final.loads == {"ok": len(good), "failed": broken}
    revisions = check_answers(load.answers, read_events(audit_log), good)
    assert sum(count for name, count in revisions.items() if name.startswith("A-")) > 0
    assert sum(count for name, count in revisions.items() if name.startswith("B-")) > 0

    refusals = refusal_lines(tmp_path / "serve-0.log")
    assert len(refusals) == broken == 12
    assert sum("not valid YAML" in line for line in refusals) == 6
    assert sum("protocol" in line for line in refusals) == 6
    assert refusals[0].startswith(f"B-2: {bundle.path}: line ")  # the first: after A-1, B-2
    print(
        f"\n{len(load.answers)} checks answered during {len(plan)} writes: "
        f"{len(good) - 1} reloads, {broken} refusals, {len(load.errors)} errors"
    )


def flip_get_quote(text: bytes) -> bytes:
    allowed, refused = b"tools: [get_quote, list_symbols]", b"tools: [list_symbols]"
    flipped = text.replace(allowed, refused) if allowed in text else text.replace(refused, allowed)
    assert flipped != text
    return flipped


def signed(
    template: str, directory: Path, revision: str, key: BundleSigningKey
) -> tuple[bytes, bytes]:
    """The bundle text of ``revision`` and its signature (over it and its JWKS file)."""
    text = good_text(template, revision).encode()
    files = BundleFiles(entry="bundle.yaml", origin=str(directory), root=directory)
    files.files["bundle.yaml"] = text
    load_bundle_files(files)  # reads jwks.json into the snapshot, so the manifest has it
    return text, sign_bundle(files, key, revision=revision)


async def test_signed_reloads_refuse_tampered_and_unsigned_bundles(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path)
    template = bundle.path.read_text()
    key = generate_signing_key()
    public = tmp_path / "bundle-key.pub"
    public.write_bytes(key.verification_key.public_pem())
    signature = tmp_path / "bundle.yaml.sig"
    text, sig = signed(template, tmp_path, "A-0", key)
    bundle.path.write_bytes(text)
    signature.write_bytes(sig)

    port, metrics_port = free_port(), free_port()
    audit_log = tmp_path / "audit.jsonl"
    command = serve_command(
        bundle.path,
        port,
        "--audit-log",
        str(audit_log),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--poll-interval",
        str(POLL_SECONDS),
        "--verify-key",
        str(public),
    )
    good, broken = ["A-0"], 0
    with serving([(port, command)], tmp_path):
        load = Load(port, bundle)
        load.start()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                service = Service(http, metrics_port, load)
                await service.serving("A-0")
                for index in range(1, 13, 3):
                    # Re-signed: goes live. The signature first, then the bundle: the pair
                    # is read only once both have held still for a poll.
                    revision = f"{'B' if index % 2 else 'A'}-{index}"
                    text, sig = signed(template, tmp_path, revision, key)
                    write_atomic(signature, sig)
                    write(bundle.path, text, index)
                    await service.serving(revision)
                    good.append(revision)

                    # Edited after signing, keeping its revision, to flip get_quote: were it
                    # served, the answers would not match their revision.
                    write(bundle.path, flip_get_quote(text), index + 1)
                    broken += 1
                    await service.refused(broken, serving=revision)

                    # The signature removed: unsigned, refused.
                    signature.unlink()
                    broken += 1
                    await service.refused(broken, serving=revision)
                final = await scrape(http, metrics_port)
        finally:
            await load.stop()

    assert load.errors == []
    assert final.loads == {"ok": len(good), "failed": broken}
    check_answers(load.answers, read_events(audit_log), good)
    refusals = refusal_lines(tmp_path / "serve-0.log")
    assert len(refusals) == broken == 8
    assert sum("file 'bundle.yaml' has changed since it was signed" in r for r in refusals) == 4
    assert sum("is not signed, but a verification key is configured" in r for r in refusals) == 4
    print(
        f"\n{len(load.answers)} checks answered with signed bundles: "
        f"{len(good) - 1} reloads, {broken} refusals, {len(load.errors)} errors"
    )
