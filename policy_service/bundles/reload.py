"""Hot reload: poll the bundle's source, build the next state aside, swap it in whole.

Every ``interval`` seconds (and at once on ``poke``, which SIGHUP calls) the reloader asks
the source for a new snapshot. A new one is verified (when a key is configured), compiled
in a worker thread and given a started JWT verifier, all off the request path; only then
does one reference swap put it into service. Checks read the state once, so each sees the
old bundle or the new one, never a mix.

Anything that goes wrong on the way refuses the new bundle: the last good one keeps
serving, one ERROR line gives the reason, and ``bundles.loads.failed`` counts it. A refused
bundle is not retried: a path offers it again only when its files change, a URL when its
ETag does (a bundle server that cannot be reached is asked again, and refused, each poll).

The old state's JWT verifier may still be in use by checks that began before the swap, so
it is closed only ``retire_after_seconds`` later; the JWKS URL sources the new verifier
took over from it (with the keys they hold) stay open, because a reload must not depend
on the identity provider being up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from policy_service.bundles.files import BundleFiles
from policy_service.bundles.signing import BundleVerificationKey, load_signed_bundle
from policy_service.bundles.sources import BundleSource
from policy_service.errors import BundleError, PolicyServiceError
from policy_service.identity.jwt import JwtVerifier
from policy_service.policy.model import CompiledBundle
from policy_service.state import BundleState, ServingBundles

__all__ = [
    "RETIRE_AFTER_SECONDS",
    "BundleLoad",
    "BundleLoaded",
    "BundleReloader",
    "ReloadOutcome",
    "bundle_loader",
]

log = logging.getLogger("policy_service.reload")

BundleLoad = Callable[[BundleFiles], CompiledBundle]
# Told of each bundle put into service by a reload (rollback protection raises its floor).
BundleLoaded = Callable[[CompiledBundle], None]
# A check holds the state it started with until it answers: within its gRPC deadline
# (Envoy's ext_authz timeout, usually well under a second), or a JWKS fetch timeout if it
# waits on one. Far longer than either, and still no real cost to keep a verifier open.
RETIRE_AFTER_SECONDS = 60.0


class ReloadOutcome(enum.Enum):
    UNCHANGED = "unchanged"
    LOADED = "loaded"
    REFUSED = "refused"


def bundle_loader(
    keys: BundleVerificationKey | Sequence[BundleVerificationKey] | None,
    environ: Mapping[str, str] | None = None,
) -> BundleLoad:
    """How every bundle is loaded, the first and each reload: verified against ``keys`` when
    there are any (the signature's key id picks one), so an unsigned, tampered or
    foreign-signed bundle is refused at start and on reload."""

    def load(files: BundleFiles) -> CompiledBundle:
        return load_signed_bundle(files, keys, environ=environ)

    return load


class BundleReloader:
    def __init__(
        self,
        bundles: ServingBundles,
        source: BundleSource,
        *,
        load: BundleLoad | None = None,
        watch: bool = True,
        interval_seconds: float | None = None,
        retire_after_seconds: float = RETIRE_AFTER_SECONDS,
        dry_run: bool = False,
        loaded: BundleLoaded | None = None,
    ) -> None:
        """``watch=False`` reloads on ``poke`` (SIGHUP) only; ``interval_seconds`` defaults
        to the source's own (a second for a path, 30 for a URL). ``dry_run``: this source
        feeds the bundle the gateway evaluates beside the enforced one, never enforcing it;
        its refusals are logged, and not counted with the enforced bundle's loads.
        ``loaded`` is told of each bundle once it serves."""
        self._bundles = bundles
        self._dry_run = dry_run
        self._what = "dry-run bundle" if dry_run else "bundle"
        self._source = source
        self._load = load or bundle_loader(None)
        self._interval = (interval_seconds or source.default_interval_seconds) if watch else None
        self._retire_after = retire_after_seconds
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retiring: dict[asyncio.Task[None], JwtVerifier] = {}
        self._last_refusal: str | None = None  # why the source's current files were refused
        self._loaded = loaded

    @property
    def interval_seconds(self) -> float | None:
        return self._interval

    def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="bundle-reloader")
        where = self._source.location
        if self._interval is None:
            log.info("%s: reloading %s on SIGHUP only", self._what, where)
        else:
            log.info(
                "%s: watching %s every %gs (SIGHUP: at once)", self._what, where, self._interval
            )

    def poke(self) -> None:
        """Look for a new bundle now (SIGHUP), whether or not the source is watched."""
        self._poke.set()

    async def stop(self) -> None:
        """Stop polling, and close the verifiers of replaced bundles now: call it once no
        check can still be running on them (after the server has drained)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        retiring = dict(self._retiring)
        for waiting in retiring:
            waiting.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for verifier in retiring.values():
            await verifier.aclose()  # once only: closing twice is a no-op

    async def _run(self) -> None:
        while True:
            if self._interval is None:
                await self._poke.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self._interval)
            poked = self._poke.is_set()
            self._poke.clear()
            try:
                await self.reload(settled=poked)
            except Exception:
                # reload() refuses what it can explain; this is a bug, and polling goes on.
                log.exception("bundle reloader failed; still polling")

    async def reload(self, *, settled: bool = False) -> ReloadOutcome:
        """Poll the source once and put a new bundle into service if there is one.

        ``settled`` (after SIGHUP): a change is taken at once, without waiting for it to
        hold still for a poll. One at a time: the reloader's own task calls it, or a test.
        """
        current = self._serving()
        try:
            files = await self._source.poll(settled=settled)
            if files is None:
                if settled:
                    self._say_unchanged(current.bundle.revision)
                return ReloadOutcome.UNCHANGED
            state = await self._build(files, current.jwt)
        except Exception as exc:  # whatever it is, the bundle is refused
            self._refuse(current.bundle.revision, exc)
            return ReloadOutcome.REFUSED
        if self._dry_run:
            previous = self._bundles.swap_dry_run(state) or current
        else:
            previous = self._bundles.swap(state)
        self._source.accepted(files)
        self._last_refusal = None
        self._retire(previous.jwt)
        log.info(
            "%s revision %s -> %s loaded from %s",
            self._what,
            previous.bundle.revision,
            state.bundle.revision,
            self._source.location,
        )
        if self._loaded is not None:
            try:
                self._loaded(state.bundle)
            except PolicyServiceError as exc:
                # It serves already (it passed every check); what failed is bookkeeping
                # about it, such as the rollback floor's state file.
                log.error("%s revision %s serves, but %s", self._what, state.bundle.revision, exc)
        return ReloadOutcome.LOADED

    def _serving(self) -> BundleState:
        if self._dry_run:
            state = self._bundles.dry_run
            assert state is not None, "a dry-run reloader starts after its first bundle"
            return state
        return self._bundles.current

    async def _build(self, files: BundleFiles, serving_jwt: JwtVerifier) -> BundleState:
        # Compiling is pure Python, milliseconds for a large bundle: a worker thread keeps
        # it from holding up checks in the meantime.
        bundle = await asyncio.to_thread(self._load, files)
        jwt = serving_jwt.successor(bundle.issuers)
        try:
            await jwt.start()  # a bad key file refuses the bundle here, before the swap
            return BundleState.from_bundle(bundle, jwt)
        except BaseException:
            await jwt.aclose()  # hands back the URL sources it took over; closes its own
            raise

    def _refuse(self, serving: str, exc: Exception) -> None:
        if not self._dry_run:
            loads = self._bundles.loads
            loads.failed += 1
            loads.failed_at = time.time()
        unexpected = not isinstance(exc, PolicyServiceError)
        if isinstance(exc, BundleError):
            reason = "; ".join(str(problem) for problem in exc.problems)
        elif not unexpected:
            reason = str(exc)  # our own errors (KeySourceError...) never carry secrets
        else:
            # The traceback is for whoever fixes the bug; the line says what happened.
            reason = f"unexpected error ({type(exc).__name__})"
        self._last_refusal = reason
        log.error(
            "%s reload refused, still serving revision %s: %s",
            self._what,
            serving,
            reason,
            exc_info=exc if unexpected else None,
        )

    def _say_unchanged(self, serving: str) -> None:
        """Answer a SIGHUP that found nothing new: whoever sent it is waiting to hear."""
        where = self._source.location
        if self._last_refusal is not None:
            log.error(
                "reload requested: %s at %s is unchanged since it was refused (%s); still "
                "serving revision %s",
                self._what,
                where,
                self._last_refusal,
                serving,
            )
        else:
            log.info(
                "reload requested: %s at %s is unchanged; serving revision %s",
                self._what,
                where,
                serving,
            )

    def _retire(self, verifier: JwtVerifier) -> None:
        task = asyncio.create_task(self._close_later(verifier))
        self._retiring[task] = verifier
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)

    async def _close_later(self, verifier: JwtVerifier) -> None:
        await asyncio.sleep(self._retire_after)
        await verifier.aclose()
