"""What a check reads about the bundles being served, and the object reload swaps them in.

``BundleState`` is everything one bundle gives a check (the compiled policy, its JWT
verifier, its API keys), swapped as a unit. ``ServingBundles`` holds the current one and a
dry-run one beside it, and counts loads: reload and metrics talk to it, the pipeline only
reads it, once per check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from policy_service.identity.apikeys import ApiKeyVerifier
from policy_service.identity.jwt import JwtVerifier
from policy_service.policy.model import CompiledBundle


@dataclass(frozen=True, slots=True)
class BundleState:
    """Everything a check needs from one bundle, swapped as a unit on reload."""

    bundle: CompiledBundle
    jwt: JwtVerifier
    api_keys: ApiKeyVerifier

    @classmethod
    def from_bundle(cls, bundle: CompiledBundle, jwt: JwtVerifier | None = None) -> BundleState:
        return cls(bundle, jwt or JwtVerifier(bundle.issuers), ApiKeyVerifier(bundle.api_keys))


@dataclass(slots=True)
class BundleLoads:
    """Bundles put into service (the first, then each swap), and reloads refused, for metrics."""

    ok: int = 1
    loaded_at: float = field(default_factory=time.time)
    failed: int = 0  # new bundles refused by the reloader; the last good one kept serving
    failed_at: float | None = None


class ServingBundles:
    """The bundle serving checks, the one in dry run beside it, and their load counts.

    Reload swaps them and metrics read them; the pipeline only reads the current one, once
    per check. A swap is one reference assignment, so a check always sees one bundle."""

    def __init__(self, state: BundleState) -> None:
        self._current = state
        self._dry_run: BundleState | None = None
        self.loads = BundleLoads()

    @property
    def current(self) -> BundleState:
        return self._current

    @property
    def state(self) -> BundleState:
        """The current bundle (what ``telemetry.metrics.Served`` reads)."""
        return self._current

    @property
    def dry_run(self) -> BundleState | None:
        return self._dry_run

    def swap(self, state: BundleState) -> BundleState:
        previous, self._current = self._current, state
        self.loads.ok += 1
        self.loads.loaded_at = time.time()
        return previous

    def swap_dry_run(self, state: BundleState | None) -> BundleState | None:
        """Put a bundle in dry run beside the enforced one (None takes it out)."""
        previous, self._dry_run = self._dry_run, state
        return previous
