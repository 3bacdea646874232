"""One description of a check, read alike by the span, the audit event and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_service.request.model import (
    A2aBinding,
    A2aRequest,
    CallKind,
    JsonRpcCall,
    McpRequest,
)
from policy_service.telemetry.facts import CheckFacts, facts_of, session_reference
from policy_service.telemetry.record import CheckRecord
from tests.support.bundles import TestBundle, write_test_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> TestBundle:
    return write_test_bundle(tmp_path)


def record_for(bundle: TestBundle, upstream: str, parsed: McpRequest | A2aRequest) -> CheckRecord:
    record = CheckRecord.new()
    record.bundle = bundle.bundle
    record.upstream = bundle.bundle.by_name[upstream]
    record.parsed = parsed
    return record


def test_a_route_tag_naming_no_upstream_is_the_only_fact() -> None:
    record = CheckRecord.new()
    record.route_tag = "payroll"
    assert facts_of(record) == CheckFacts(route_tag="payroll")


def test_an_mcp_batch_names_its_first_method_and_its_first_named_target(
    bundle: TestBundle,
) -> None:
    calls = (
        JsonRpcCall(CallKind.METHOD, "notifications/initialized", None, None),
        JsonRpcCall(CallKind.TOOL, "tools/call", "get_quote", 7),
    )
    parsed = McpRequest("2025-03-26", calls, is_batch=True, session_id="s-1")
    facts = facts_of(record_for(bundle, "fininfo", parsed))
    assert facts == CheckFacts(
        upstream="fininfo",
        protocol="mcp",
        method="notifications/initialized",
        target_kind=CallKind.TOOL,
        target="get_quote",
        request_id=None,
        mcp_protocol_version="2025-03-26",
        mcp_session_id=session_reference("s-1"),
        batch_size=2,
    )


def test_an_a2a_call_names_its_method_and_id(bundle: TestBundle) -> None:
    parsed = A2aRequest("SendMessage", A2aBinding.JSONRPC, 12, "1.0")
    facts = facts_of(record_for(bundle, "helper", parsed))
    assert facts == CheckFacts(
        upstream="helper", protocol="a2a", method="SendMessage", request_id="12"
    )
