"""The one Prometheus text reader of the tests (servers' and operator's /metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str, name: str | None = None) -> Iterator[Sample]:
    """The samples of Prometheus exposition ``text`` (only ``name``'s if given)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if name is None or sample.name == name:
                yield sample


def total(text: str, name: str, /, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples(text, name) if labels.items() <= s.labels.items())


def scrape(base_url: str) -> str:
    """``base_url``'s /metrics text."""
    r = httpx.get(f"{base_url}/metrics", timeout=60, follow_redirects=True)
    r.raise_for_status()
    return r.text
