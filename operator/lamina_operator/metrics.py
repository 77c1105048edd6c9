"""Prometheus metrics of the operator itself (served with --metrics-port)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from lamina_operator.cost import month_bounds

RECONCILE_SECONDS = Histogram(
    "lamina_operator_reconcile_duration_seconds",
    "Time one reconcile of an LLMDeployment took, by result (ok; retry: the API failed; "
    "error: a bug, logged).",
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


class CostFigures(Collector):
    """This month's accelerator-seconds and cost per LLMDeployment, exactly as its
    status.cost says (as of its asOf). Counters of the calendar month: they restart
    from zero on the 1st (UTC), which rate() and increase() treat as a counter reset;
    the `_created` sample is the month's start."""

    def __init__(self) -> None:
        self._figures: dict[tuple[str, str], Mapping[str, Any]] = {}

    def record(self, key: tuple[str, str], cost: Mapping[str, Any] | None) -> None:
        """The status.cost of one LLMDeployment (None: no accounting, or it is gone)."""
        if cost is None:
            self._figures.pop(key, None)
        else:
            self._figures[key] = cost

    def collect(self) -> Iterator[CounterMetricFamily]:
        seconds = CounterMetricFamily(
            "lamina_accelerator_seconds",
            "Accelerator-seconds (GPU-seconds, or pod-seconds on CPU) of an LLMDeployment's "
            "pods this calendar month (UTC), as in its status.cost.",
            labels=["namespace", "name", "accelerator"],
        )
        cost = CounterMetricFamily(
            "lamina_cost",
            "Cost of an LLMDeployment's pods this calendar month (UTC), as in its status.cost.",
            labels=["namespace", "name", "currency"],
        )
        for (namespace, name), figures in sorted(self._figures.items()):
            created = month_bounds(str(figures["month"]))[0].timestamp()
            seconds.add_metric(
                [namespace, name, str(figures["accelerator"])],
                float(figures["acceleratorSeconds"]),
                created=created,
            )
            cost.add_metric(
                [namespace, name, str(figures["currency"])], float(figures["cost"]), created=created
            )
        yield seconds
        yield cost


def register_cost_figures(figures: CostFigures) -> None:
    """Expose the accounting's figures."""
    REGISTRY.register(figures)
