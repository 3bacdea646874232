"""Server-sent events split as they stream: every line ending, every chunk boundary."""

from __future__ import annotations

import pytest

from policy_service.responses.sse import SseEvent, SseSplitter, parse_event

STREAM = (
    b": a comment line\n\n"
    b'event: message\nid: 7\ndata: {"a":1}\n\n'
    b"data: first line\ndata: second line\n\n"
    b"data\n\n"
    b"retry: 1000\n\n"
)
EXPECTED = [
    SseEvent(b": a comment line\n\n", None),
    SseEvent(b'event: message\nid: 7\ndata: {"a":1}\n\n', b'{"a":1}'),
    SseEvent(b"data: first line\ndata: second line\n\n", b"first line\nsecond line"),
    SseEvent(b"data\n\n", b""),
    SseEvent(b"retry: 1000\n\n", None),
]


def _with_line_ending(stream: bytes, ending: bytes) -> bytes:
    return stream.replace(b"\n", ending)


def _split(chunks: list[bytes]) -> list[SseEvent]:
    splitter = SseSplitter()
    events = []
    for chunk in chunks:
        events += splitter.feed(chunk)
    tail = splitter.finish()
    if tail is not None:
        events.append(tail)
    return events


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending_splits_the_same_events(ending: bytes) -> None:
    stream = _with_line_ending(STREAM, ending)

    events = _split([stream])

    assert [event.data for event in events] == [event.data for event in EXPECTED]
    assert b"".join(event.raw for event in events) == stream  # every byte passes through


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_an_event_split_at_every_byte_position_is_the_same_event(ending: bytes) -> None:
    stream = _with_line_ending(STREAM, ending)
    whole = _split([stream])

    for cut in range(1, len(stream)):
        assert _split([stream[:cut], stream[cut:]]) == whole, cut


def test_an_event_fed_byte_by_byte_is_handed_out_by_the_byte_that_ends_it() -> None:
    splitter = SseSplitter()
    stream = b"data: one\r\n\r\ndata: two\n\n"
    ends = []
    for position in range(len(stream)):
        if splitter.feed(stream[position : position + 1]):
            ends.append(position)

    # After "\r\n\r" the event waits for one more byte: it may be the "\n" of a CRLF.
    assert ends == [len(b"data: one\r\n\r\n") - 1, len(stream) - 1]


def test_a_cr_at_a_chunk_end_waits_for_the_next_byte() -> None:
    splitter = SseSplitter()

    assert splitter.feed(b"data: x\r\n\r") == []
    assert splitter.pending == len(b"data: x\r\n\r")
    events = splitter.feed(b"\ndata: y")

    assert events == [SseEvent(b"data: x\r\n\r\n", b"x")]
    assert splitter.pending == len(b"data: y")


def test_two_crs_end_an_event_and_the_next_byte_starts_the_next() -> None:
    splitter = SseSplitter()

    assert splitter.feed(b"data: x\r\r") == []
    events = splitter.feed(b"data: y\r\r")

    assert events == [SseEvent(b"data: x\r\r", b"x")]


def test_the_unterminated_tail_is_handed_out_at_the_end() -> None:
    splitter = SseSplitter()

    assert splitter.feed(b"data: done\n\ndata: cut") == [SseEvent(b"data: done\n\n", b"done")]
    assert splitter.finish() == SseEvent(b"data: cut", b"cut")
    assert splitter.finish() is None


def test_a_dropped_event_ends_the_tail() -> None:
    splitter = SseSplitter()
    splitter.feed(b"data: partial")

    splitter.drop_event()

    assert splitter.pending == 0
    assert splitter.finish() is None


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\r\n\r"])
def test_a_dropped_event_ends_where_it_ends_whatever_the_chunks(end: bytes) -> None:
    # The dropped event's end may be split over chunks: the next event is still whole.
    rest = b"xxxx" * 10 + end + b"data: next\n\n"
    for cut in range(len(rest) + 1):
        splitter = SseSplitter()
        splitter.feed(b"data: big")
        splitter.drop_event()

        events = splitter.feed(rest[:cut]) + splitter.feed(rest[cut:])

        assert events == [SseEvent(b"data: next\n\n", b"next")], cut
        assert splitter.pending == 0


def test_a_dropped_event_keeps_only_a_few_bytes() -> None:
    splitter = SseSplitter()
    splitter.feed(b"data: big")
    splitter.drop_event()

    for _ in range(100):
        assert splitter.feed(b"y" * 1000) == []

    assert splitter.pending == 0
    assert len(splitter._pending) <= 3  # the dropped event is not held


def test_data_without_a_space_keeps_its_value_and_only_one_space_is_dropped() -> None:
    assert parse_event(b"data:x\ndata:  y\n\n").data == b"x\n y"


def test_with_data_replaces_the_data_lines_and_keeps_the_other_fields() -> None:
    event = parse_event(b"event: message\r\nid: 7\r\ndata: old\r\ndata: more\r\n\r\n")

    assert event.with_data(b'{"new":true}') == b'event: message\nid: 7\ndata: {"new":true}\n\n'
