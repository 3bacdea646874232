"""The response side: what an MCP upstream's answers get before the caller sees them.

The check marks the requests whose answers need work (``plan``); Envoy sends only those
answers to the response processor, which filters lists (``listing``), checks tool
definitions against their pins (``pins``), redacts secrets (``redaction``) and binds
sessions to their principal (``sessions``), answer by answer or SSE event by event.
"""
