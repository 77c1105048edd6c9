"""Run the operator as a real process (tests, benchmarks) and read its Prometheus metrics."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import metrics_text
import yaml
from kube_cluster import REPO, Cluster, wait_until

CRD_FILE = REPO / "crds" / "lamina.dev_llmdeployments.yaml"


def apply_crd(cluster: Cluster) -> None:
    """Install (or update) the LLMDeployment CRD from crds/ and wait until it serves."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/llmdeployments.lamina.dev", "--timeout=60s"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@dataclass
class OperatorProcess:
    """A running operator and how to read its metrics."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metric(self, name: str, /, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return metrics_text.total(text, name, **labels)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(namespace: str, env: Mapping[str, str], log: Path) -> OperatorProcess:
    """`python -m lamina_operator --namespace NS`, returned once its liveness answers."""
    liveness, metrics = free_port(), free_port()
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
        env=dict(env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def alive() -> bool:
        assert process.poll() is None, f"operator exited:\n{log.read_text()}"
        return _answers(f"http://127.0.0.1:{liveness}/healthz")

    wait_until(alive, timeout=60, what="operator liveness endpoint")
    return OperatorProcess(process, metrics, log)


class StartOperator(Protocol):
    """Starts the operator for one namespace; `env` adds to its environment (e.g.
    LAMINA_COST_REFRESH_SECONDS)."""

    def __call__(self, namespace: str, env: Mapping[str, str] | None = None) -> OperatorProcess: ...


# -- LLMDeployments through kubectl, as a user reads them ---------------------------


def llmd(name: str, **spec: Any) -> str:
    body = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, **spec}
    return yaml.safe_dump(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    proc = cluster.kubectl("-n", namespace, "get", *what, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})
