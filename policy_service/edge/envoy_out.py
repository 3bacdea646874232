"""Decision -> CheckResponse: the only place that knows the shape of Envoy's answer.

Every answer carries the decision id: to the client as ``x-decision-id`` (on a denial, and
on the upstream's answer to an allowed call), and to Envoy as dynamic metadata under the
ext_authz filter's namespace, where the access log reads
``%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%``.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from policy_service.decisions.model import ANSWERS, Allow, Decision, GrpcStatus, Serve
from policy_service.decisions.render import HttpAnswer, render_deny, render_serve

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
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
    return response


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _allow(decision: Allow, decision_id: str) -> external_auth_pb2.CheckResponse:
    answer_headers = [_header(name, value) for name, value in decision.response_headers]
    if decision_id:
        answer_headers.append(_header(DECISION_ID_HEADER, decision_id))
    ok = external_auth_pb2.OkHttpResponse(
        headers=[_header(name, value) for name, value in decision.headers_to_set],
        headers_to_remove=list(decision.headers_to_remove),
        response_headers_to_add=answer_headers,
    )
    return external_auth_pb2.CheckResponse(status=_OK, ok_response=ok)


def _deny(
    answer: HttpAnswer, status: status_pb2.Status, decision_id: str
) -> external_auth_pb2.CheckResponse:
    # A "denied" response is also how the gateway serves its own documents (status 200):
    # Envoy sends it to the client as a local reply and never touches the upstream.
    headers = [_header(name, value) for name, value in answer.headers]
    if decision_id:
        headers.append(_header(DECISION_ID_HEADER, decision_id))
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=answer.status),
        headers=headers,
        body=answer.body.decode(),
    )
    return external_auth_pb2.CheckResponse(status=status, denied_response=denied)
