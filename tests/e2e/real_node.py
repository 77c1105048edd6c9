"""Helpers of the end-to-end tests on the local real node (hack/node.sh).

Everything here acts through the user's tools (kubectl, helm, HTTP to a Service's
ClusterIP): what a test sees is what a user would see.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kube_cluster import REPO, Cluster, wait_until

NODE = "lamina-node"
IMAGES_SH = REPO / "hack" / "images.sh"
NODE_SH = REPO / "hack" / "node.sh"
MODEL_VOLUME_SH = REPO / "hack" / "model-volume.sh"


def load_images(*names: str) -> None:
    """Build (cached by content) and import into the node's containerd what it lacks."""
    proc = subprocess.run([str(IMAGES_SH), "load", *names], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/images.sh load failed:\n{proc.stderr[-4000:]}")


def image_ref(name: str) -> str:
    out = subprocess.run([str(IMAGES_SH), "ref", name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def create_restricted_namespace(cluster: Cluster, name: str) -> None:
    """A namespace that enforces Pod Security `restricted`, as production ones should."""
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "lamina.dev/test": "true",
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ),
    )
    wait_until(
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        timeout=60,
        what=f"ServiceAccount {name}/default",
    )


@dataclass(frozen=True)
class ModelVolume:
    """A local PersistentVolume on the real node holding models, bound to a claim
    (hack/model-volume.sh: what `make demo` uses too)."""

    cluster: Cluster
    namespace: str
    claim: str

    @classmethod
    def create(cls, cluster: Cluster, namespace: str, models: dict[str, Path]) -> ModelVolume:
        """Pods of ``namespace`` that mount claim ``models`` see /cache/models/<name>."""
        pairs = [f"{name}={path}" for name, path in models.items()]
        cluster.run(str(MODEL_VOLUME_SH), "create", namespace, "models", *pairs)
        return cls(cluster, namespace, "models")

    def delete(self) -> None:
        self.cluster.run(str(MODEL_VOLUME_SH), "delete", self.namespace, self.claim, check=False)


def service_url(cluster: Cluster, namespace: str, name: str) -> str:
    """http://<ClusterIP>:<port> of a Service: reached from this host through kube-proxy."""
    svc = cluster.get_json("-n", namespace, "get", "service", name)
    return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"


def server_pods(cluster: Cluster, namespace: str, instance: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=lamina-server,app.kubernetes.io/instance={instance}"
    items: list[dict[str, Any]] = cluster.get_json("-n", namespace, "get", "pods", "-l", selector)[
        "items"
    ]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


@dataclass
class Load:
    """Requests sent without pause by ``workers`` threads until stopped; every
    outcome is counted (status code, or the exception's class name). Each worker
    holds one keep-alive connection, as an SDK would."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    workers: int = 4
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _worker(self) -> None:
        with httpx.Client(headers=self.headers, timeout=120) as client:
            while not self._stop.is_set():
                try:
                    code = str(client.post(self.url, json=self.body).status_code)
                except httpx.HTTPError as error:
                    code = type(error).__name__
                with self._lock:
                    self.outcomes[code] += 1
                    if code != "200":
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {code}")

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in threads:
                t.join(timeout=180)

    def wait_for_requests(self, count: int, timeout: float = 120) -> None:
        start = sum(self.outcomes.values())
        wait_until(
            lambda: sum(self.outcomes.values()) >= start + count,
            timeout=timeout,
            what=f"{count} more requests",
        )


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_until with a coarser interval: these waits span pod starts (minutes)."""
    return wait_until(probe, timeout=timeout, interval=1.0, what=what)
