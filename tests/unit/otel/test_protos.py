"""The OTel proto modules must be opentelemetry-proto's, and the service puts them back."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import pytest

from policy_service.errors import ConfigError
from policy_service.otel import protos as otel_protos
from policy_service.otel.protos import ensure_otel_protos, main, otel_protos_intact


def test_the_otlp_exporter_and_receiver_see_current_otel_protos() -> None:
    # tests/conftest.py repaired them before anything imported them, as serve and dev do.
    assert otel_protos_intact()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.trace.v1 import trace_pb2

    assert OTLPSpanExporter is not None
    assert "scope_spans" in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name


def test_check_mode_reports_intact_modules() -> None:
    assert main(["--check"]) == 0


class FakePip:
    """Stands in for pip: records the call, and 'repairs' when told to succeed."""

    def __init__(self, state: dict[str, bool], status: int) -> None:
        self.state = state
        self.status = status
        self.calls: list[list[str]] = []

    def __call__(self, arguments: Sequence[str]) -> int:
        self.calls.append(list(arguments))
        if self.status == 0:
            self.state["intact"] = True
        return self.status


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    state = {"intact": False}
    monkeypatch.setattr(otel_protos, "otel_protos_intact", lambda: state["intact"])
    for module in otel_protos._MARKERS:
        monkeypatch.delitem(sys.modules, module, raising=False)
    return state


def test_intact_modules_need_no_pip() -> None:
    pip = FakePip({}, status=0)
    assert ensure_otel_protos(pip) is False
    assert pip.calls == []


def test_overwritten_modules_are_reinstalled_at_the_installed_version_and_logged(
    broken: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    pip = FakePip(broken, status=0)
    with caplog.at_level(logging.WARNING, logger="policy_service.telemetry"):
        assert ensure_otel_protos(pip) is True
    (call,) = pip.calls
    assert call[:1] == ["install"]
    assert "--force-reinstall" in call
    assert "--no-deps" in call
    from importlib.metadata import version

    assert call[-1] == f"opentelemetry-proto=={version('opentelemetry-proto')}"
    assert "reinstalled opentelemetry-proto==" in caplog.text
    assert "xds-protos had overwritten its modules" in caplog.text


def test_a_failed_reinstall_says_what_to_run(broken: dict[str, bool]) -> None:
    with pytest.raises(ConfigError, match=r"run python -m policy_service.otel.protos"):
        ensure_otel_protos(FakePip(broken, status=1))


def test_modules_already_loaded_cannot_be_repaired_in_process(
    broken: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.common.v1.common_pb2", object())
    pip = FakePip(broken, status=0)
    with pytest.raises(ConfigError, match="already loaded in this process"):
        ensure_otel_protos(pip)
    assert pip.calls == []
