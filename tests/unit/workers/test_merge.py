"""The one /metrics of `serve --workers N`: what merging the workers' registries gives.

Each worker's text is made by prometheus_client from a real registry and read back with its
text parser, exactly as the supervisor does per scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from policy_service.workers.merge import (
    CountCarry,
    WorkerAnswer,
    merge_worker_metrics,
    summed_only,
)

BUCKETS = (0.001, 0.01, 0.1)


def scrape(fill: Callable[[CollectorRegistry], None]) -> list[Metric]:
    registry = CollectorRegistry()
    fill(registry)
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def worker(checks: dict[str, int], latencies: list[float], revision: str) -> list[Metric]:
    def fill(registry: CollectorRegistry) -> None:
        counter = Counter("checks", "Checks.", ("decision",), registry=registry)
        for decision, count in checks.items():
            counter.labels(decision).inc(count)
        histogram = Histogram("latency_seconds", "Latency.", buckets=BUCKETS, registry=registry)
        for seconds in latencies:
            histogram.observe(seconds)
        Gauge("bundle_info", "Bundle.", ("revision",), registry=registry).labels(revision).set(1)

    return scrape(fill)


def samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def test_counters_are_summed_per_label_set() -> None:
    merged = samples(
        merge_worker_metrics(
            {
                "1": worker({"allow": 3, "deny": 1}, [], "r1"),
                "2": worker({"allow": 4}, [], "r1"),
            }
        )
    )
    assert merged[("checks_total", (("decision", "allow"),))] == 7
    assert merged[("checks_total", (("decision", "deny"),))] == 1


def test_histograms_are_summed_bucket_by_bucket() -> None:
    merged = samples(
        merge_worker_metrics(
            {
                "1": worker({}, [0.0005, 0.05], "r1"),
                "2": worker({}, [0.005, 0.5, 0.0001], "r1"),
            }
        )
    )
    assert merged[("latency_seconds_bucket", (("le", "0.001"),))] == 2
    assert merged[("latency_seconds_bucket", (("le", "0.01"),))] == 3
    assert merged[("latency_seconds_bucket", (("le", "0.1"),))] == 4
    assert merged[("latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert merged[("latency_seconds_count", ())] == 5
    assert abs(merged[("latency_seconds_sum", ())] - 0.5556) < 1e-9


def test_gauges_stay_per_worker_with_a_worker_label() -> None:
    merged = samples(merge_worker_metrics({"1": worker({}, [], "r1"), "2": worker({}, [], "r2")}))
    gauges = {key: value for key, value in merged.items() if key[0] == "bundle_info"}
    assert gauges == {
        ("bundle_info", (("revision", "r1"), ("worker", "1"))): 1,
        ("bundle_info", (("revision", "r2"), ("worker", "2"))): 1,
    }


def test_created_series_are_dropped() -> None:
    merged = merge_worker_metrics({"1": worker({"allow": 1}, [0.1], "r1")})
    names = {sample.name for family in merged for sample in family.samples}
    assert not any(name.endswith("_created") for name in names)
    assert {family.name for family in merged} == {"checks", "latency_seconds", "bundle_info"}


def test_a_summary_sums_its_count_and_sum_and_keeps_quantiles_per_worker() -> None:
    def fill(registry: CollectorRegistry) -> None:
        Summary("sizes", "Sizes.", registry=registry).observe(3)

    one, two = scrape(fill), scrape(fill)
    # prometheus_client's Summary has no quantiles: add one the way other exporters do.
    for families in (one, two):
        (summary,) = [family for family in families if family.name == "sizes"]
        summary.add_sample("sizes", {"quantile": "0.5"}, 3.0)
    merged = samples(merge_worker_metrics({"1": one, "2": two}))
    assert merged[("sizes_count", ())] == 2
    assert merged[("sizes_sum", ())] == 6
    assert merged[("sizes", (("quantile", "0.5"), ("worker", "1")))] == 3
    assert merged[("sizes", (("quantile", "0.5"), ("worker", "2")))] == 3


def test_the_output_is_valid_exposition_that_parses_back() -> None:
    merged = merge_worker_metrics(
        {"1": worker({"allow": 2}, [0.002], "r1"), "2": worker({"allow": 5}, [0.2], "r1")}
    )

    class Fixed:
        def collect(self) -> list[Metric]:
            return merged

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    assert "# TYPE checks_total counter" in text
    assert 'checks_total{decision="allow"} 7.0' in text
    assert samples(list(text_string_to_metric_families(text))) == samples(merged)


def test_carried_counts_add_up_without_their_gauges() -> None:
    merged = samples(
        merge_worker_metrics(
            {"1": worker({"allow": 1}, [], "r1")},
            carried=[worker({"allow": 10}, [], "old")],
        )
    )
    assert merged[("checks_total", (("decision", "allow"),))] == 11
    assert ("bundle_info", (("revision", "old"), ("worker", "1"))) not in merged
    assert summed_only(worker({}, [], "r1"))[0].name == "latency_seconds"


def allowed(families: list[Metric]) -> float:
    return samples(families)[("checks_total", (("decision", "allow"),))]


def test_a_restarted_worker_keeps_its_predecessors_counts_in_the_sum() -> None:
    carry = CountCarry()
    first = carry.merge(
        {
            "1": WorkerAnswer(100, worker({"allow": 5}, [], "r1")),
            "2": WorkerAnswer(200, worker({"allow": 7}, [], "r1")),
        }
    )
    assert allowed(first) == 12
    # Worker 2 died and its successor (pid 201) starts counting from zero.
    after = carry.merge(
        {
            "1": WorkerAnswer(100, worker({"allow": 6}, [], "r1")),
            "2": WorkerAnswer(201, worker({"allow": 1}, [], "r1")),
        }
    )
    assert allowed(after) == 6 + 7 + 1


def test_a_worker_that_misses_a_scrape_is_carried_by_its_last_counts() -> None:
    carry = CountCarry()
    carry.merge(
        {
            "1": WorkerAnswer(100, worker({"allow": 5}, [], "r1")),
            "2": WorkerAnswer(200, worker({"allow": 7}, [], "r2")),
        }
    )
    missed = carry.merge(
        {
            "1": WorkerAnswer(100, worker({"allow": 6}, [], "r1")),
            "2": WorkerAnswer(200, None),
        }
    )
    assert allowed(missed) == 13
    gauges = [key for key in samples(missed) if key[0] == "bundle_info"]
    assert gauges == [("bundle_info", (("revision", "r1"), ("worker", "1")))]


def test_summed_samples_never_go_down() -> None:
    carry = CountCarry()
    carry.merge({"1": WorkerAnswer(100, worker({"allow": 9}, [], "r1"))})
    # A scrape that reads less than before (a reset the pid did not show): Prometheus would
    # take it for a counter reset, and rate() for a burst.
    lower = carry.merge({"1": WorkerAnswer(100, worker({"allow": 5}, [], "r1"))})
    assert allowed(lower) == 9
    higher = carry.merge({"1": WorkerAnswer(100, worker({"allow": 12}, [], "r1"))})
    assert allowed(higher) == 12
