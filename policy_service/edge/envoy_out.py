"""Decision -> CheckResponse: the only place that knows the shape of Envoy's answer.

Every answer carries the decision id: to the client as ``x-decision-id`` (on a denial, and
on the upstream's answer to an allowed call), and to Envoy as dynamic metadata under the
ext_authz filter's namespace, where the access log reads
``%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%``.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2

from policy_service.decisions.model import ANSWERS, Allow, Decision, GrpcStatus, Serve
from policy_service.decisions.render import HttpAnswer, render_deny, render_serve

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_PERMISSION_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
_GRPC_STATUS = {
    GrpcStatus.UNAUTHENTICATED: status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
    GrpcStatus.PERMISSION_DENIED: _PERMISSION_DENIED,
}
DECISION_ID_HEADER = "x-decision-id"


def to_check_response(decision: Decision, decision_id: str = "") -> external_auth_pb2.CheckResponse:
    if isinstance(decision, Allow):
        response = _allow(decision, decision_id)
    elif isinstance(decision, Serve):
        response = _deny(render_serve(decision), _PERMISSION_DENIED, decision_id)
    else:
        status = _GRPC_STATUS[ANSWERS[decision.kind].grpc_status]
        response = _deny(render_deny(decision), status, decision_id)
    if decision_id:
        metadata = response.dynamic_metadata
        metadata.fields["decision_id"].string_value = decision_id
        metadata.fields["reason"].string_value = decision.reason
    if isinstance(decision, Allow) and decision.response_plan is not None:
        # Envoy forwards this namespace to the ext_proc stream of the same request.
        for key, text in decision.response_plan.to_metadata().items():
            response.dynamic_metadata.fields[key].string_value = text
    return response


def _put(options: Any, name: str, value: str) -> None:
    """Append one overwriting header to a repeated HeaderValueOption field.

    Filled in place: a nested keyword constructor per header cost three times as much, and
    an allowed check sends about ten headers."""
    option = options.add()
    header = option.header
    header.key = name
    header.value = value
    option.append_action = _OVERWRITE


def _allow(decision: Allow, decision_id: str) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse()
    response.status.code = code_pb2.OK
    ok = response.ok_response
    ok.SetInParent()  # an allow with nothing to change is still an ok_response
    upstream_headers = ok.headers
    for name, value in decision.headers_to_set:
        _put(upstream_headers, name, value)
    ok.headers_to_remove.extend(decision.headers_to_remove)
    answer_headers = ok.response_headers_to_add
    for name, value in decision.response_headers:
        _put(answer_headers, name, value)
    if decision_id:
        _put(answer_headers, DECISION_ID_HEADER, decision_id)
    return response


def _deny(
    answer: HttpAnswer, status: status_pb2.Status, decision_id: str
) -> external_auth_pb2.CheckResponse:
    # A "denied" response is also how the gateway serves its own documents (status 200):
    # Envoy sends it to the client as a local reply and never touches the upstream.
    response = external_auth_pb2.CheckResponse()
    response.status.CopyFrom(status)
    denied = response.denied_response
    denied.status.code = answer.status
    headers = denied.headers
    for name, value in answer.headers:
        _put(headers, name, value)
    if decision_id:
        _put(headers, DECISION_ID_HEADER, decision_id)
    denied.body = answer.body.decode()
    return response
