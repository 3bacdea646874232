"""Decision -> CheckResponse: the only place that knows the shape of Envoy's answer."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from policy_service.decisions.model import Allow, Decision, DenyKind, Serve
from policy_service.decisions.render import HttpAnswer, render_deny, render_serve

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_PERMISSION_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
_UNAUTHENTICATED = status_pb2.Status(code=code_pb2.UNAUTHENTICATED)


def to_check_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    if isinstance(decision, Allow):
        return _allow(decision)
    if isinstance(decision, Serve):
        return _deny(render_serve(decision), _PERMISSION_DENIED)
    status = (
        _UNAUTHENTICATED
        if decision.kind in (DenyKind.MISSING_CREDENTIAL, DenyKind.INVALID_CREDENTIAL)
        else _PERMISSION_DENIED
    )
    return _deny(render_deny(decision), status)


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _allow(decision: Allow) -> external_auth_pb2.CheckResponse:
    ok = external_auth_pb2.OkHttpResponse(
        headers=[_header(name, value) for name, value in decision.headers_to_set],
        headers_to_remove=list(decision.headers_to_remove),
        response_headers_to_add=[_header(name, value) for name, value in decision.response_headers],
    )
    return external_auth_pb2.CheckResponse(status=_OK, ok_response=ok)


def _deny(answer: HttpAnswer, status: status_pb2.Status) -> external_auth_pb2.CheckResponse:
    # A "denied" response is also how the gateway serves its own documents (status 200):
    # Envoy sends it to the client as a local reply and never touches the upstream.
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=answer.status),
        headers=[_header(name, value) for name, value in answer.headers],
        body=answer.body.decode(),
    )
    return external_auth_pb2.CheckResponse(status=status, denied_response=denied)
