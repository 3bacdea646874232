"""Audit lines of several processes on one stream (`serve --workers N`): the record lock.

Another real process holds the lock here (POSIX record locks belong to processes, so a
thread of this one could not stand in for it), and the test sees which writes need it:
those fail at once instead of waiting for it, so no worker ever blocks on another.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from policy_service.telemetry.audit import TORN_LINE_END, AuditFailureMode, Auditor, FileSink
from tests.support.hang import hang_guard

LONG_LINE = b"x" * select.PIPE_BUF + b"\n"
WAIT_SECONDS = 10.0
BOUND_SECONDS = 0.1  # the most a write may hold up the event loop, with room for a slow CI
F_GETPIPE_SZ = 1032  # fcntl.F_GETPIPE_SZ from Python 3.10 on Linux; spelled for mypy
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@contextmanager
def lock_held_elsewhere(lock: Path) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=WAIT_SECONDS)


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()


@pytest.fixture(autouse=True)
def guard() -> Iterator[None]:
    with hang_guard(30):
        yield


def timed_write(sink: FileSink, line: bytes) -> tuple[OSError | None, float]:
    started = time.monotonic()
    try:
        sink.write(line)
    except OSError as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_on_a_file_only_a_line_longer_than_pipe_buf_needs_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    out = tmp_path / "audit.jsonl"
    sink = FileSink.open(out).shared(os.open(lock, os.O_RDWR))
    with lock_held_elsewhere(lock) as holder:
        assert timed_write(sink, b"short\n")[0] is None, "a short O_APPEND write is whole"
        error, seconds = timed_write(sink, LONG_LINE)
        assert isinstance(error, BlockingIOError), "a long line does not wait for the lock"
        assert seconds < BOUND_SECONDS
        release(holder)
        holder.wait(WAIT_SECONDS)
    assert timed_write(sink, LONG_LINE)[0] is None
    sink.close()
    assert out.read_bytes() == b"short\n" + LONG_LINE


def test_on_a_pipe_every_line_needs_the_lock(tmp_path: Path) -> None:
    # A short line could land between the pieces of another process's long one.
    lock = tmp_path / "lock"
    lock.touch()
    read_end, write_end = os.pipe()
    sink = FileSink(write_end, "pipe", owned=True).shared(os.open(lock, os.O_RDWR))
    with lock_held_elsewhere(lock) as holder:
        error, seconds = timed_write(sink, b"short\n")
        assert isinstance(error, BlockingIOError)
        assert seconds < BOUND_SECONDS
        release(holder)
        holder.wait(WAIT_SECONDS)
    assert timed_write(sink, b"short\n")[0] is None
    sink.close()
    assert os.read(read_end, 100) == b"short\n"
    os.close(read_end)


def test_a_worker_ends_the_line_another_worker_left_cut_on_a_shared_pipe(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    read_end, write_end = os.pipe()
    capacity = fcntl.fcntl(write_end, F_GETPIPE_SZ)
    first = FileSink(write_end, "pipe", owned=False).shared(os.open(lock, os.O_RDWR))
    second = FileSink(write_end, "pipe", owned=True).shared(os.open(lock, os.O_RDWR))
    assert first.write(b"x" * (capacity - 2 * select.PIPE_BUF) + b"\n") is None
    long_line = b'{"event":"' + b"y" * (4 * select.PIPE_BUF) + b'"}\n'
    error, seconds = timed_write(first, long_line)  # goes in part; nobody reads
    assert isinstance(error, BlockingIOError)
    assert seconds < BOUND_SECONDS
    assert isinstance(timed_write(second, b"{}\n")[0], BlockingIOError), "nothing glues on"
    received = drain(read_end)
    assert timed_write(second, b'{"after":1}\n')[0] is None
    second.close()
    received += drain(read_end)
    os.close(read_end)
    lines = received.split(b"\n")
    assert lines[-1] == b""
    assert lines[1].startswith(b'{"event":"yyy')
    assert lines[1].endswith(TORN_LINE_END.rstrip(b"\n"))
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])
    assert json.loads(lines[2]) == {"after": 1}
    assert len(lines) == 4


def drain(read_end: int) -> bytes:
    os.set_blocking(read_end, False)
    chunks = []
    while True:
        try:
            chunk = os.read(read_end, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:  # every write end closed
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_lock_that_fails_refuses_the_call_as_a_failed_write_would(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    lock_fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    os.close(lock_fd)  # the lock file is gone: locking raises OSError (EBADF)
    auditor = Auditor(
        FileSink(write_end, "pipe", owned=True).shared(lock_fd), AuditFailureMode.CLOSED
    )
    assert auditor.write({"decision": "allow"}) is False
    assert (auditor.written, auditor.failed) == (0, 1)
    auditor.close()
    os.close(read_end)
