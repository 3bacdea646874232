"""Before any test imports them: opentelemetry-proto's modules, not xds-protos' old copy.

The service repairs the clash itself when tracing is on (policy_service.otel.protos);
the tests' own OTLP receiver imports the modules directly, so the suite repairs it first,
the same way, and the README's test command needs no step of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policy_service.bundles.rollback import STATE_DIR_ENV_VAR
from policy_service.otel.protos import ensure_otel_protos


def pytest_configure(config: pytest.Config) -> None:
    if ensure_otel_protos():
        config.issue_config_time_warning(
            pytest.PytestWarning(
                "reinstalled opentelemetry-proto over xds-protos' older copy of its modules"
            ),
            stacklevel=2,
        )


@pytest.fixture(scope="session", autouse=True)
def rollback_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Where every ``serve --verify-key`` the tests start keeps its rollback floor: the
    session's own folder, never the home directory of whoever runs the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STATE_DIR_ENV_VAR, str(tmp_path_factory.mktemp("rollback-state")))
        yield
