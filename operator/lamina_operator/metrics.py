"""Prometheus metrics of the operator itself (served with --metrics-port)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

RECONCILE_SECONDS = Histogram(
    "lamina_operator_reconcile_duration_seconds",
    "Time one reconcile of an LLMDeployment took, by result (ok or retry).",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def observe_reconcile(result: str, seconds: float) -> None:
    """Count one reconcile and its duration."""
    RECONCILE_SECONDS.labels(result=result).observe(seconds)


class _ApiRequests(Collector):
    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "lamina_operator_api_requests",
            "Kubernetes API requests made by reconcile(), by HTTP verb (kopf's watches aside).",
            labels=["verb"],
        )
        for verb, count in sorted(self._counts.items()):
            family.add_metric([verb], count)
        yield family


def register_api_counter(counts: Counter[str]) -> None:
    """Expose the Kube client's request counter."""
    REGISTRY.register(_ApiRequests(counts))
