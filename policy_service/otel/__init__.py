"""OpenTelemetry plumbing with no domain types: the provider, propagation, phase spans and
the repair of the OTel proto modules. The lowest layer that traces: the Redis store opens
spans through it without knowing what a check is; ``telemetry`` adds what a check means.
"""
