"""Envoy for tests: the package's runner (a missing Envoy fails loudly, never skips)."""

from policy_service.gateway.envoy_process import (
    EnvoyError,
    EnvoyNotFoundError,
    EnvoyProcess,
    find_envoy_binary,
    free_port,
    validate_config,
)

__all__ = [
    "EnvoyError",
    "EnvoyNotFoundError",
    "EnvoyProcess",
    "find_envoy_binary",
    "free_port",
    "validate_config",
]
