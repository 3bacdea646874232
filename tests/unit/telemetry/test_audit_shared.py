"""Audit lines of several processes on one stream (`serve --workers N`): the record lock.

Another real process holds the lock here (POSIX record locks belong to processes, so a
thread of this one could not stand in for it), and the test sees which writes wait for it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from policy_service.telemetry.audit import AuditFailureMode, Auditor, FileSink

LONG_LINE = b"x" * select.PIPE_BUF + b"\n"
WAIT_SECONDS = 10.0
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


def write_in_thread(sink: FileSink, line: bytes) -> threading.Thread:
    writer = threading.Thread(target=sink.write, args=(line,), daemon=True)
    writer.start()
    return writer


def test_on_a_file_only_a_line_longer_than_pipe_buf_waits_for_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    out = tmp_path / "audit.jsonl"
    sink = FileSink.open(out).shared(os.open(lock, os.O_RDWR))
    with lock_held_elsewhere(lock) as holder:
        short = write_in_thread(sink, b"short\n")
        short.join(WAIT_SECONDS)
        assert not short.is_alive(), "an O_APPEND write of a short line is whole: no lock"
        long = write_in_thread(sink, LONG_LINE)
        long.join(0.3)
        assert long.is_alive(), "a long line waits for the other process's lock"
        release(holder)
        long.join(WAIT_SECONDS)
        assert not long.is_alive()
    sink.close()
    assert out.read_bytes() == b"short\n" + LONG_LINE


def test_on_a_pipe_every_line_waits_for_the_lock(tmp_path: Path) -> None:
    # A short line could land between the pieces of another process's long one.
    lock = tmp_path / "lock"
    lock.touch()
    read_end, write_end = os.pipe()
    sink = FileSink(write_end, "pipe", owned=True).shared(os.open(lock, os.O_RDWR))
    with lock_held_elsewhere(lock) as holder:
        short = write_in_thread(sink, b"short\n")
        short.join(0.3)
        assert short.is_alive()
        release(holder)
        short.join(WAIT_SECONDS)
        assert not short.is_alive()
    sink.close()
    assert os.read(read_end, 100) == b"short\n"
    os.close(read_end)


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
