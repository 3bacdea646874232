"""``serve --workers N`` without Redis: a bundle that binds sessions is loaded, and said to
break clients whose requests reach another worker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.reload import BundleLoad
from policy_service.policy.model import CompiledBundle
from policy_service.workers.worker import warn_in_process_sessions
from tests.support.bundles import write_test_bundle

FILES = BundleFiles("bundle.yaml", "bundle.yaml")


@pytest.fixture
def binding(tmp_path: Path) -> CompiledBundle:
    bound = tmp_path / "bound"
    bound.mkdir()
    return write_test_bundle(bound, fininfo_responses="      sessions: {bind: true}\n").bundle


@pytest.fixture
def plain(tmp_path: Path) -> CompiledBundle:
    return write_test_bundle(tmp_path).bundle


def loader(*bundles: CompiledBundle) -> BundleLoad:
    """A load that hands out ``bundles`` in turn, whatever the files."""
    queue = list(bundles)
    return lambda files: queue.pop(0)


def test_a_bundle_binding_sessions_is_loaded_with_a_warning(
    binding: CompiledBundle, caplog: pytest.LogCaptureFixture
) -> None:
    load = warn_in_process_sessions(loader(binding), 4, quiet_first=False)
    with caplog.at_level(logging.WARNING, "policy_service.workers"):
        assert load(FILES) is binding
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "--workers 4" in message
    assert "upstreams fininfo" in message
    assert "404 session_unknown" in message
    assert "--redis-url" in message


def test_a_bundle_binding_nothing_is_loaded_silently(
    plain: CompiledBundle, caplog: pytest.LogCaptureFixture
) -> None:
    load = warn_in_process_sessions(loader(plain), 4, quiet_first=False)
    with caplog.at_level(logging.WARNING, "policy_service.workers"):
        assert load(FILES) is plain
    assert caplog.records == []


def test_a_worker_says_it_on_reloads_only(
    binding: CompiledBundle, caplog: pytest.LogCaptureFixture
) -> None:
    # Its supervisor said it at startup; each worker would repeat it N times.
    load = warn_in_process_sessions(loader(binding, binding), 2, quiet_first=True)
    with caplog.at_level(logging.WARNING, "policy_service.workers"):
        load(FILES)
        assert caplog.records == []
        load(FILES)
    assert len(caplog.records) == 1
