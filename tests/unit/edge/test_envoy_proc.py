"""The ext_proc replies the response side sends: what Envoy is told to do to an answer."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from policy_service.edge.envoy_proc import body_reply, headers_reply


def test_a_headers_reply_removes_and_sets_headers() -> None:
    reply = headers_reply(
        ("content-length",), skip_body=False, set_headers=(("content-type", "application/json"),)
    )

    mutation = reply.response_headers.response.header_mutation
    assert list(mutation.remove_headers) == ["content-length"]
    [option] = mutation.set_headers
    assert (option.header.key, option.header.raw_value) == ("content-type", b"application/json")
    # Replaced, never appended: two content types would leave the client to pick one.
    assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert not reply.HasField("mode_override")


def test_a_headers_reply_can_skip_the_body() -> None:
    reply = headers_reply((), skip_body=True)

    assert reply.HasField("mode_override")
    assert not reply.response_headers.response.header_mutation.set_headers


def test_an_empty_body_reply_clears_the_chunk() -> None:
    # Held: the chunk is replaced by nothing, not passed on.
    assert body_reply(b"").response_body.response.body_mutation.clear_body
    assert body_reply(b"x").response_body.response.body_mutation.body == b"x"
