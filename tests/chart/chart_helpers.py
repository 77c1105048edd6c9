"""Helpers of the Helm chart tests: rendering, the installed release, credentials."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kube_cluster import REPO, Cluster

CHART = REPO / "charts" / "lamina"
RELEASE = "lamina"

Helm = Callable[..., subprocess.CompletedProcess[str]]


# Helm flags that put the operator pod on a (tainted) kwok GPU node.
ON_KWOK_NODE = (
    "--set-json",
    'nodeSelector={"type": "kwok"}',
    "--set-json",
    'tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
)


def manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of one kind (and name, if given)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


@dataclass(frozen=True)
class Release:
    """The chart installed in one namespace."""

    cluster: Cluster
    namespace: str
    name: str = RELEASE

    @property
    def service_account(self) -> str:
        return self.name  # fullname: the release name already contains the chart name

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def install(self, *args: str, command: str = "install") -> subprocess.CompletedProcess[str]:
        """``helm install|upgrade`` this release (and wait for it).

        Helm 4 server-side applies the chart's CRDs even when they exist, so a CRD
        applied before by someone else (kubectl, another release) conflicts on
        ownership; the chart's CRDs are the repository's, so taking them over is safe.

        The operator pod is placed on a kwok node, where it is simulated: these tests
        are about the chart (RBAC, values, upgrades) and run the operator as a host
        process with the chart's credentials. tests/e2e runs the real operator pod.
        """
        return self.cluster.helm(
            command,
            self.name,
            str(CHART),
            "--namespace",
            self.namespace,
            "--wait",
            "--timeout",
            "2m",
            "--force-conflicts",
            *ON_KWOK_NODE,
            *args,
        )

    def can_i(self, *args: str) -> bool:
        """``kubectl auth can-i args... --as=<the chart's ServiceAccount>``."""
        proc = self.cluster.kubectl("auth", "can-i", *args, f"--as={self.user}", check=False)
        answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if answer not in ("yes", "no"):
            raise AssertionError(f"kubectl auth can-i {args}: {proc.stdout}{proc.stderr}")
        return answer == "yes"


def restrict(cluster: Cluster, namespace: str) -> None:
    """Make ``namespace`` enforce PodSecurity ``restricted``."""
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    )


def operator_kubeconfig(release: Release, path: Path) -> Path:
    """A kubeconfig with a fresh token of the chart's ServiceAccount and no admin credentials."""
    token = release.cluster.kubectl(
        "-n", release.namespace, "create", "token", release.service_account, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(release.cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lamina", "cluster": cluster["cluster"]}],
        "users": [{"name": release.user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {
                    "cluster": "lamina",
                    "user": release.user,
                    "namespace": release.namespace,
                },
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


def pods_ready(cluster: Cluster, namespace: str, selector: str, count: int) -> bool:
    """True when ``count`` pods match ``selector`` and all are Ready."""
    pods = cluster.get_json("-n", namespace, "get", "pods", "-l", selector)["items"]
    ready = [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    return len(pods) == count and len(ready) == count
