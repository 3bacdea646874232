"""What a newcomer sees when the dev stack cannot start, and the hints it prints."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from policy_service.dev.stack import DevPorts, DevStack, cli_invocation
from policy_service.errors import ConfigError
from policy_service.gateway.envoy_process import explain_start_failure
from tests.support.envoy import free_port

RELATIVE_KEY = (
    "[2026-12-04 20:21:20.681][4831][critical][main] [source/server/server.cc:449] error "
    "`Failed to load incomplete private key from path: .dev-stack/certs/tls.key` initializing "
    "config 'goo.gle/debugstr  \n  /tmp/envoy-run-x/envoy.yaml'\n"
    "Failed to load incomplete private key from path: .dev-stack/certs/tls.key\n"
)
PORT_TAKEN = (
    "[error][config] listener 'plain_http' failed to bind or apply socket options: cannot bind "
    "'127.0.0.1:8080': Address already in use\n[critical][main] error `cannot bind "
    "'127.0.0.1:8080': Address already in use` initializing config 'x'\n"
)


def test_a_relative_path_is_named_and_the_working_directory_explained() -> None:
    message = explain_start_failure(RELATIVE_KEY, Path("/tmp/envoy-run-x"))
    assert message.startswith("Envoy could not use the file .dev-stack/certs/tls.key: ")
    assert "the path is relative" in message
    assert "its own working directory (/tmp/envoy-run-x)" in message
    assert "give an absolute path" in message
    assert message.endswith(
        "Envoy said: Failed to load incomplete private key from path: .dev-stack/certs/tls.key"
    )


def test_a_missing_absolute_file_is_called_missing(tmp_path: Path) -> None:
    missing = tmp_path / "certs" / "tls.crt"
    stderr = f"error `Failed to load certificate chain from {missing}` initializing config 'x'"
    message = explain_start_failure(stderr, tmp_path)
    assert f"Envoy could not use the file {missing}: there is no such file." in message


def test_a_file_that_is_there_but_wrong_says_so(tmp_path: Path) -> None:
    key = tmp_path / "tls.key"
    key.write_text("not a key")
    stderr = (
        f"error `Failed to load incomplete private key from path: {key}` initializing config 'x'"
    )
    message = explain_start_failure(stderr, tmp_path)
    assert "it exists and is readable, but its content is not what Envoy expects" in message


def test_a_taken_port_names_the_address_and_how_to_find_the_holder() -> None:
    message = explain_start_failure(PORT_TAKEN, Path("/w"))
    assert message.startswith("Envoy could not listen on 127.0.0.1:8080: Address already in use.")
    assert "ss -ltnp 'sport = :8080'" in message


def test_anything_else_is_passed_on_as_envoy_said_it() -> None:
    message = explain_start_failure(
        "error `Unknown field: foo` initializing config 'x'", Path("/w")
    )
    assert message == "Envoy refused its configuration: Unknown field: foo"


async def test_the_dev_stack_names_every_taken_port_and_its_flag_before_starting(
    tmp_path: Path,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = DevPorts(
            http=taken,
            https=free_port(),
            admin=free_port(),
            authz=free_port(),
            fininfo=free_port(),
            currenttime=free_port(),
            agent=free_port(),
            metrics=free_port(),
        )
        with pytest.raises(
            ConfigError, match=rf"in use by another process: {taken} \(--http-port\)"
        ):
            await DevStack(tmp_path, ports).start()
    assert not (tmp_path / "envoy.yaml").exists()  # nothing was started half-way


def test_the_state_dir_is_absolute_whatever_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DevStack(Path(".dev-stack")).state_dir == tmp_path.resolve() / ".dev-stack"


def test_the_printed_cli_is_plain_when_the_venv_is_activated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Path(sys.executable).parent / "policy-service"
    assert script.exists(), "the tests run from a venv with the package installed"
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert cli_invocation() == "policy-service"


def test_the_printed_cli_is_a_path_when_the_venv_is_not_activated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = Path(sys.executable).parent / "policy-service"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(script.parent.parent.parent)  # the directory that holds .venv
    shown = cli_invocation()
    assert shown == str(script.absolute().relative_to(Path.cwd()))
    monkeypatch.chdir(tmp_path)  # elsewhere: an absolute path, still runnable
    assert Path(cli_invocation()).is_absolute()
