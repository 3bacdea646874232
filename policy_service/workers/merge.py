"""Many workers' metrics as one process's: counts summed, gauges kept per worker.

Why not prometheus_client's multiprocess mode: it replaces each process's registry with
files of values, and the service's scrape-time collectors (telemetry.metrics: the bundle
revision, JWKS refreshes, Redis round trips, audit events, read from live objects when
Prometheus scrapes) have no value to put in a file. So every worker keeps its own
registry, and the supervisor merges what they expose, the way multiprocess mode would:

    counter, histogram, summary   summed over workers per sample name and labels
                                  (histograms bucket by bucket; a summary's quantiles
                                  cannot be summed and stay per worker, like gauges)
    gauge and everything else     one sample per worker, with a ``worker`` label: the
                                  equivalent of multiprocess mode's "all" gauges

``*_created`` series are dropped: a sum of creation times means nothing, and per worker
they would double the series for no use (rate() does not read them).

``CountCarry`` keeps the merged counts from going down, which Prometheus would read as a
counter reset (and rate() as a burst): when a worker is replaced, the last counts scraped
from the old process stay in the sum; when a worker misses a scrape, its last counts stand
in for it; and each summed sample is never reported below what was reported before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

WORKER_LABEL = "worker"
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
_QUANTILE = "quantile"
_CREATED = "_created"

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def merge_worker_metrics(
    workers: Mapping[str, Iterable[Metric]], carried: Iterable[Iterable[Metric]] = ()
) -> list[Metric]:
    """One set of families from each worker's (keyed by its ``worker`` label value).

    ``carried`` are counts of processes that did not answer this time (or are gone): only
    their summed samples count, nothing that describes a process now."""
    merged = _Merged()
    for label, families in workers.items():
        merged.add(list(families), label)
    for families in carried:
        merged.add(list(families), None)
    return merged.result()


def summed_only(families: Iterable[Metric]) -> list[Metric]:
    """The families whose samples add up across processes, without per-worker samples."""
    return merge_worker_metrics({}, [families])


def _key(sample: Sample) -> SampleKey:
    return sample.name, tuple(sorted(sample.labels.items()))


def _created_of(families: Sequence[Metric]) -> set[str]:
    """The names of the ``_created`` gauge families of this scrape's summed families."""
    return {f.name + _CREATED for f in families if f.type in SUMMED_TYPES}


class _Merged:
    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}  # by name, in the order first seen
        self._sums: dict[str, dict[SampleKey, Sample]] = {}
        self._per_worker: dict[str, list[Sample]] = {}

    def add(self, families: Sequence[Metric], worker: str | None) -> None:
        created = _created_of(families)
        for family in families:
            if family.name in created:
                continue
            if worker is None and family.type not in SUMMED_TYPES:
                continue
            known = self._families.setdefault(family.name, _empty_like(family))
            if known.type != family.type:
                continue  # two workers disagree on a type: keep the first one's samples
            for sample in family.samples:
                self._add_sample(family, sample, worker)

    def _add_sample(self, family: Metric, sample: Sample, worker: str | None) -> None:
        if sample.name.endswith(_CREATED):
            return
        if _is_summed(family, sample):
            sums = self._sums.setdefault(family.name, {})
            key = _key(sample)
            previous = sums.get(key)
            total = sample.value if previous is None else previous.value + sample.value
            sums[key] = Sample(sample.name, dict(sample.labels), total)
        elif worker is not None:
            labels = {**sample.labels, WORKER_LABEL: worker}
            self._per_worker.setdefault(family.name, []).append(
                Sample(sample.name, labels, sample.value, sample.timestamp)
            )

    def result(self) -> list[Metric]:
        out = []
        for name, family in self._families.items():
            samples = list(self._sums.get(name, {}).values()) + self._per_worker.get(name, [])
            if samples:
                family.samples = samples
                out.append(family)
        return out


def _is_summed(family: Metric, sample: Sample) -> bool:
    if family.type == "summary":
        return _QUANTILE not in sample.labels
    return family.type in SUMMED_TYPES


def _empty_like(family: Metric) -> Metric:
    return Metric(family.name, family.documentation, family.type, family.unit)


@dataclass(frozen=True)
class WorkerAnswer:
    """What one worker slot gave this scrape: its process and its families (None: it did
    not answer, or no process is serving in the slot now)."""

    pid: int | None
    families: Sequence[Metric] | None


class CountCarry:
    """Merges each scrape so that summed samples never go down (see the module docstring).

    Not thread-safe: the caller serializes scrapes."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int | None, list[Metric]]] = {}  # by worker label
        self._retired: list[Metric] = []  # summed counts of replaced processes
        self._reported: dict[SampleKey, float] = {}

    def merge(self, answers: Mapping[str, WorkerAnswer]) -> list[Metric]:
        fresh: dict[str, Sequence[Metric]] = {}
        stale: list[list[Metric]] = []
        for label, answer in answers.items():
            last = self._last.get(label)
            if answer.families is None:
                if last is not None:
                    stale.append(last[1])
                continue
            if last is not None and last[0] != answer.pid:
                # A new process in the slot: the old one's counts are history now.
                self._retired = summed_only([*self._retired, *last[1]])
            self._last[label] = (answer.pid, summed_only(answer.families))
            fresh[label] = answer.families
        merged = merge_worker_metrics(fresh, [self._retired, *stale])
        return [self._never_lower(family) for family in merged]

    def _never_lower(self, family: Metric) -> Metric:
        if family.type not in SUMMED_TYPES:
            return family
        samples = []
        for sample in family.samples:
            if not _is_summed(family, sample):
                samples.append(sample)
                continue
            key = _key(sample)
            value = max(sample.value, self._reported.get(key, sample.value))
            self._reported[key] = value
            samples.append(sample._replace(value=value))
        family.samples = samples
        return family
