"""Shared pytest fixtures.

``cluster`` (session): the local Kubernetes cluster of ``hack/cluster.sh``
(real etcd/kube-apiserver/controller-manager/scheduler, kwok GPU nodes). A
cluster that is already up is reused and left running; one this session
started is torn down at the end (set ``LAMINA_KEEP_CLUSTER=1`` to keep it).
Returns a :class:`kube_cluster.Cluster` (``kubeconfig``, ``bin_dir``, ``env``,
``kubectl()``, ``helm()``, ``get_json()``).

``namespace`` (function): a fresh namespace labelled ``lamina.dev/test=true``,
deleted (without waiting) after the test.

Mark tests that use these with ``@pytest.mark.cluster``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import kube_cluster
import pytest
from kube_cluster import Cluster

TEST_NAMESPACE_LABEL = "lamina.dev/test"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    was_up = kube_cluster.is_up()
    handle = kube_cluster.up()
    yield handle
    if not was_up and not os.environ.get("LAMINA_KEEP_CLUSTER"):
        kube_cluster.down()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(3)}"
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=(
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
            f"  labels:\n    {TEST_NAMESPACE_LABEL}: 'true'\n"
        ),
    )
    # Pods are refused until the controller manager made the namespace's
    # default ServiceAccount; wait for it so tests need not.
    kube_cluster.wait_until(
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        timeout=60,
        what=f"ServiceAccount {name}/default",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
