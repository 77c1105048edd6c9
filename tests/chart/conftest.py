"""Fixtures for the Helm chart tests.

``helm`` (session): the built helm binary without a cluster (lint, template).
``chart_release`` (function, cluster): the chart installed with default values into
the test's namespace, which enforces PodSecurity ``restricted``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import kube_cluster
import pytest
from chart.chart_helpers import Helm, Release, restrict
from kube_cluster import Cluster, CommandError


@pytest.fixture(scope="session")
def helm() -> Helm:
    """``helm args...``; raises on failure unless check=False."""
    binary = kube_cluster.bin_dir() / "helm"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(binary), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    return run


@pytest.fixture
def chart_release(cluster: Cluster, namespace: str) -> Iterator[Release]:
    """The chart installed (defaults) into a namespace enforcing PodSecurity restricted."""
    restrict(cluster, namespace)
    release = Release(cluster, namespace)
    release.install()
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/llmdeployments.lamina.dev", "--timeout=60s"
    )
    yield release
    cluster.helm("uninstall", release.name, "--namespace", namespace, check=False)
