"""Fixtures for operator tests against the real local cluster.

``crd`` (session): the LLMDeployment CRD, applied from ``crds/`` and Established.
``run_operator`` (function): starts ``python -m lamina_operator --namespace NS`` as a
real process; stopped (after its LLMDeployments are deleted) at the end of the test.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_cluster import REPO, Cluster, wait_until
from operator_harness import OperatorProcess, StartOperator, free_port

CRD_FILE = REPO / "crds" / "lamina.dev_llmdeployments.yaml"


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/llmdeployments.lamina.dev", "--timeout=60s"
    )


@pytest.fixture
def run_operator(cluster: Cluster, crd: None, tmp_path: Path) -> Iterator[StartOperator]:
    started: list[tuple[str, OperatorProcess]] = []

    def start(namespace: str) -> OperatorProcess:
        liveness, metrics = free_port(), free_port()
        log = tmp_path / f"operator-{len(started)}.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lamina_operator",
                "--namespace",
                namespace,
                "--liveness",
                f"http://127.0.0.1:{liveness}/healthz",
                "--metrics-port",
                str(metrics),
            ],
            env=cluster.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        operator = OperatorProcess(process, metrics, log)
        started.append((namespace, operator))

        def alive() -> bool:
            assert process.poll() is None, f"operator exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(alive, timeout=60, what="operator liveness endpoint")
        return operator

    yield start
    for namespace, operator in reversed(started):
        if operator.process.poll() is None:
            # Let the operator release its finalizers so the namespace can go.
            cluster.kubectl(
                "-n", namespace, "delete", "llmd", "--all", "--timeout=60s", check=False
            )
        operator.stop()
