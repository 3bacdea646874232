"""The supervisor's /metrics: every worker's registry, fetched per scrape and merged.

Each worker serves its own registry on 127.0.0.1 at a port the kernel picked (it reports
the port when it is ready). A scrape of the supervisor fetches all of them at once, each
with a short timeout, merges them (``merge``) and adds the supervisor's own series. A
worker that does not answer in time is counted in
``policy_service_worker_scrape_errors_total`` and its gauges are left out; its last counts
stand in for it, so no counter seems to reset.
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from policy_service.workers.merge import WORKER_LABEL, CountCarry, WorkerAnswer

log = logging.getLogger("policy_service.workers")

# Well under Prometheus's default scrape timeout (10 s): a stuck worker costs one scrape
# this long, not a failed scrape of all.
SCRAPE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class WorkerState:
    """One worker slot as /metrics sees it."""

    label: str  # "1".."N", the merged gauges' worker label
    pid: int | None  # the slot's process now, if any
    serving: bool  # it reported ready and has not exited since
    metrics_port: int | None  # its registry on 127.0.0.1, once it is ready
    restarts: int


def fetch_metrics_text(port: int, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> str:
    """A worker's /metrics text (plain http.client: no proxy settings apply to loopback)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return body.decode("utf-8")
    finally:
        connection.close()


class WorkerMetrics(Collector):
    """Collects the merged families of the workers ``states`` describes at scrape time."""

    def __init__(
        self,
        states: Callable[[], Sequence[WorkerState]],
        *,
        fetch: Callable[[int], str] = fetch_metrics_text,
        timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS,
    ) -> None:
        self._states = states
        self._fetch = fetch
        self._timeout = timeout_seconds
        self._carry = CountCarry()
        self._scrape_errors: dict[str, int] = {}
        self._lock = threading.Lock()  # two scrapers at once: one merge at a time
        self._pool: ThreadPoolExecutor | None = None

    def collect(self) -> Iterable[Metric]:
        states = self._states()
        texts = self._fetch_all(states)
        with self._lock:
            answers = {}
            for state in states:
                families = self._parse(state, texts.get(state.label))
                answers[state.label] = WorkerAnswer(state.pid, families)
            merged = self._carry.merge(answers)
            errors = dict(self._scrape_errors)
        yield from merged
        yield from _own_series(states, errors)

    def _fetch_all(self, states: Sequence[WorkerState]) -> dict[str, str | None]:
        targets = [s for s in states if s.serving and s.metrics_port is not None]
        if not targets:
            return {}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(states), thread_name_prefix="worker-scrape")
        futures = {
            state.label: self._pool.submit(self._fetch, state.metrics_port)
            for state in targets
            if state.metrics_port is not None
        }
        wait(futures.values(), timeout=self._timeout)
        texts: dict[str, str | None] = {}
        for label, future in futures.items():
            if not future.done() or future.exception() is not None:
                texts[label] = None
                continue
            texts[label] = future.result()
        return texts

    def _parse(self, state: WorkerState, text: str | None) -> list[Metric] | None:
        if not state.serving or state.metrics_port is None:
            return None  # not serving yet (starting or restarting): nothing to ask
        if text is not None:
            try:
                return list(text_string_to_metric_families(text))
            except ValueError:
                pass
        self._scrape_errors[state.label] = self._scrape_errors.get(state.label, 0) + 1
        log.warning("worker %s did not answer a metrics scrape in time", state.label)
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _own_series(states: Sequence[WorkerState], scrape_errors: dict[str, int]) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "policy_service_workers_configured",
        "Worker processes the supervisor keeps running (serve --workers).",
        value=len(states),
    )
    yield GaugeMetricFamily(
        "policy_service_workers_alive",
        "Worker processes serving checks now.",
        value=sum(1 for state in states if state.serving),
    )
    restarts = CounterMetricFamily(
        "policy_service_worker_restarts",
        "Workers restarted after they died, by worker.",
        labels=(WORKER_LABEL,),
    )
    errors = CounterMetricFamily(
        "policy_service_worker_scrape_errors",
        "Scrapes a worker did not answer in time (its gauges were left out), by worker.",
        labels=(WORKER_LABEL,),
    )
    for state in states:
        restarts.add_metric((state.label,), state.restarts)
        errors.add_metric((state.label,), scrape_errors.get(state.label, 0))
    yield restarts
    yield errors


def supervisor_registry(metrics: WorkerMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metrics)
    return registry
