"""The dev stack: Envoy, the policy service and demo peers on loopback, one command."""

# Where `policy-service dev` keeps its state and `policy-service token` finds the issuer:
# relative to the current directory, like the README's `.venv`.
DEFAULT_STATE_DIR = ".dev-stack"
