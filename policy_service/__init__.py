"""Envoy ext_authz policy service for MCP and A2A traffic.

Data flows one way, each arrow a pure function or a small phase:

    CheckRequest --edge.envoy_in--> HttpRequest --request.parse--> RequestTarget
        --identity--> Principal --authorization--> PolicyOutcome
        --decisions--> Decision --edge.envoy_out--> CheckResponse
"""

__version__ = "0.1.0"
