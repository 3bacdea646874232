"""Server-sent events, split as they stream: whole events out, the unfinished tail kept.

An event ends at a blank line; lines end in CRLF, LF or CR (the SSE spec allows all
three). Only ``data:`` lines are read; an event is re-written only when its data changes,
and every other byte passes through as it came.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The end of an event: a line break followed by an empty line. The groups are atomic: a
# CRLF is one line break, never a CR and then an LF (which would end every CRLF line's
# event, splitting one event's data lines into events the rewriter can't read).
_EVENT_END = re.compile(rb"(?>\r\n|\n|\r)(?>\r\n|\n|\r)")
_LINE = re.compile(rb"\r\n|\n|\r")
# While an event is dropped, the bytes kept to find its end across chunks: its end is at
# most four bytes, at least one of them in the next chunk.
_END_CONTEXT = 3


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # the event as it came, its terminating blank line included
    data: bytes | None  # its data lines joined by "\n"; None without any

    def with_data(self, data: bytes) -> bytes:
        """This event with its data replaced: other fields kept, one data line."""
        lines = []
        wrote_data = False
        for line in _LINE.split(self.raw):
            if not line:
                continue
            if line.startswith(b"data:") or line == b"data":
                if not wrote_data:
                    lines.append(b"data: " + data)
                    wrote_data = True
                continue
            lines.append(line)
        return b"\n".join(lines) + b"\n\n"


class SseSplitter:
    """Feed it chunks; it hands back the events they complete."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._dropping = False  # the pending event is dropped up to its end

    @property
    def pending(self) -> int:
        """The bytes of the event not yet complete (none of a dropped one)."""
        return 0 if self._dropping else len(self._pending)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._pending += chunk
        events = []
        start = 0
        buffer = bytes(self._pending)
        for match in _EVENT_END.finditer(buffer):
            end = match.end()
            # A CR at the very end may be half of a CRLF: wait for the next byte.
            if buffer[end - 1 : end] == b"\r" and end == len(buffer):
                break
            if self._dropping:
                self._dropping = False
            else:
                events.append(parse_event(buffer[start:end]))
            start = end
        del self._pending[:start]
        if self._dropping:
            del self._pending[:-_END_CONTEXT]
        return events

    def finish(self) -> SseEvent | None:
        """The unterminated tail at the end of the stream, as an event (or nothing)."""
        dropped, self._dropping = self._dropping, False
        tail = None if dropped or not self._pending else parse_event(bytes(self._pending))
        self._pending.clear()
        return tail

    def drop_event(self) -> None:
        """Drop the pending event, and the rest of it as it arrives: the next event handed
        out is the one after it."""
        self._dropping = True
        del self._pending[:-_END_CONTEXT]


def parse_event(raw: bytes) -> SseEvent:
    data: list[bytes] = []
    for line in _LINE.split(raw):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            data.append(b"")
    return SseEvent(raw, b"\n".join(data) if data else None)
