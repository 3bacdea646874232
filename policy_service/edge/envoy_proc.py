"""Envoy's ext_proc messages in and out: the only place that knows their shape.

The response side reads an answer's status and headers, and the plan the check left in
the ext_authz filter's dynamic metadata (Envoy forwards that namespace to the stream);
it answers with header removals, body replacements, or an immediate reply.
"""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from policy_service.responses.plan import PLAN_METADATA_KEY

EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
_SKIP_BODY = processing_mode_pb2.ProcessingMode(
    response_body_mode=processing_mode_pb2.ProcessingMode.NONE
)


def plan_text_of(request: ext_proc.ProcessingRequest) -> str | None:
    """The check's plan for this answer, if the check left one."""
    namespace = request.metadata_context.filter_metadata.get(EXT_AUTHZ_NAMESPACE)
    if namespace is None:
        return None
    value = namespace.fields.get(PLAN_METADATA_KEY)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    text: str = value.string_value
    return text


def status_and_headers(headers: ext_proc.HttpHeaders) -> tuple[int, dict[str, str]]:
    """The answer's status and its headers, names lower-case (a repeated header's values
    joined with ","; the response side reads only single-valued ones)."""
    found: dict[str, str] = {}
    for header in headers.headers.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        name = header.key.lower()
        found[name] = f"{found[name]},{value}" if name in found else value
    try:
        status = int(found.get(":status", "0"))
    except ValueError:
        status = 0
    return status, found


def headers_reply(
    remove: tuple[str, ...],
    *,
    skip_body: bool,
    set_headers: tuple[tuple[str, str], ...] = (),
) -> ext_proc.ProcessingResponse:
    reply = ext_proc.ProcessingResponse()
    common = reply.response_headers.response
    common.SetInParent()
    if remove:
        common.header_mutation.remove_headers.extend(remove)
    for name, value in set_headers:
        option = common.header_mutation.set_headers.add()
        option.header.key = name
        option.header.raw_value = value.encode()
        option.append_action = option.OVERWRITE_IF_EXISTS_OR_ADD
    if skip_body:
        reply.mode_override.CopyFrom(_SKIP_BODY)
    return reply


def body_reply(body: bytes) -> ext_proc.ProcessingResponse:
    """Replace the chunk just received by ``body`` (empty: send nothing for it yet)."""
    reply = ext_proc.ProcessingResponse()
    mutation = reply.response_body.response.body_mutation
    if body:
        mutation.body = body
    else:
        mutation.clear_body = True
    return reply


def continue_reply(phase: str) -> ext_proc.ProcessingResponse:
    """Let a phase the response side does not read pass unchanged."""
    reply = ext_proc.ProcessingResponse()
    getattr(reply, phase).SetInParent()
    return reply


def immediate_reply(status: int, body: bytes, content_type: str) -> ext_proc.ProcessingResponse:
    reply = ext_proc.ProcessingResponse()
    immediate = reply.immediate_response
    immediate.status.code = status
    immediate.body = body
    header = immediate.headers.set_headers.add().header
    header.key = "content-type"
    header.raw_value = content_type.encode()
    return reply
