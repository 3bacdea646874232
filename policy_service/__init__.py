"""Envoy ext_authz policy service for MCP and A2A traffic.

One check, in real names (``pipeline.CheckPipeline.check`` runs the phases in between):

    CheckRequest --edge.envoy_in.to_http_request--> HttpRequest
        --request.mcp.parse_mcp / request.a2a.parse_a2a--> McpRequest | A2aRequest
        --identity.credentials.extract_credential + identity.jwt.JwtVerifier--> Principal
        --authorization.policy.authorize--> Granted | Refused
        --ratelimits.limiter.RateLimiter.check--> RateLimitResult
        --> decisions.model.Allow | Deny | Serve
        --edge.envoy_out.to_check_response--> CheckResponse
    and after it, telemetry.trail.Trail.conclude: the audit event, the metrics, the span.

An allowed MCP call whose answer needs work (a list to filter, a result to redact, a
session to bind) leaves a plan (responses.plan) in Envoy's metadata, and its answer comes
back through ext_proc (``answering.ResponsePipeline``, edge.envoy_proc for the protos):

    ProcessingRequest (headers, then body chunks) --answering.AnswerProcessing-->
        responses.answers.AnswerRewriter (listing, pins, redaction) per JSON body or SSE
        event, responses.sessions on the headers --> ProcessingResponse (the chunk replaced)

Layers, lowest first. A module imports only from its own layer or lower ones, never from a
higher one, and there are no import cycles; tests/unit/test_layers.py reads this table and
walks every import to keep it so.

    layer  errors, clock, binaries, fetching, gen, event_loop   shared base
    layer  gateway                                              Envoy configs, certificates, process
    layer  otel                                                 OpenTelemetry plumbing, no domain
    layer  request                                              what is called: HTTP, MCP, A2A
    layer  identity                                             who calls: credentials, JWT, keys
    layer  policy                                               the compiled bundle phases read
    layer  authorization, decisions, ratelimits, responses      the phases' decisions; answers
    layer  edge, telemetry                                      Envoy protos in and out; the trail
    layer  state, pipeline, answering                           bundles served; a check; an answer
    layer  bundles                                              bytes to compiled policy; reload
    layer  server                                               the gRPC service
    layer  app                                                  the one place that builds it
    layer  workers                                              serve --workers: supervisor, merge
    layer  authoring                                            policy tests and explain
    layer  dev                                                  the dev stack and demo peers
    layer  cli                                                  the command line
    layer  __main__, testing                                    python -m; test doubles
"""

__version__ = "0.1.0"
