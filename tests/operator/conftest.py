"""Fixtures for operator tests against the real local cluster.

``crd`` (session): the LLMDeployment CRD, applied from ``crds/`` and Established.
``run_operator`` (function): starts ``python -m lamina_operator --namespace NS`` as a
real process; stopped (after its LLMDeployments are deleted) at the end of the test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from kube_cluster import Cluster
from operator_harness import OperatorProcess, StartOperator, apply_crd, start_operator


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    apply_crd(cluster)


@pytest.fixture
def run_operator(cluster: Cluster, crd: None, tmp_path: Path) -> Iterator[StartOperator]:
    started: list[tuple[str, OperatorProcess]] = []

    def start(namespace: str, env: Mapping[str, str] | None = None) -> OperatorProcess:
        log = tmp_path / f"operator-{len(started)}.log"
        operator = start_operator(namespace, {**cluster.env, **(env or {})}, log)
        started.append((namespace, operator))
        return operator

    yield start
    for namespace, operator in reversed(started):
        if operator.process.poll() is None:
            # Let the operator release its finalizers so the namespace can go.
            cluster.kubectl(
                "-n", namespace, "delete", "llmd", "--all", "--timeout=60s", check=False
            )
        operator.stop()
