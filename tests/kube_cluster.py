"""Handle on the local kwok-based Kubernetes cluster (see hack/cluster.sh).

Test code gets a :class:`Cluster` from the ``cluster`` fixture in
``tests/conftest.py``; import this module only to annotate types or to poll::

    from kube_cluster import Cluster, wait_until

    def test_x(cluster: Cluster, namespace: str) -> None:
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)
        pods = wait_until(lambda: cluster.get_json("-n", namespace, "get", "pods")["items"])
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SH = REPO / "hack" / "cluster.sh"
TOOLS_SH = REPO / "hack" / "cluster-tools.sh"

T = TypeVar("T")


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {self.stdout}"


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where its kubeconfig and binaries are.

    ``env`` is ``os.environ`` with ``KUBECONFIG`` set and ``bin_dir`` first on
    ``PATH``; pass it to any subprocess that should talk to the cluster.
    """

    name: str
    kubeconfig: Path
    bin_dir: Path
    env: dict[str, str]

    def run(
        self,
        tool: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``bin_dir/tool args...`` against the cluster, capturing text output."""
        cmd = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl --kubeconfig=<this cluster> args...``."""
        kc = f"--kubeconfig={self.kubeconfig}"
        return self.run("kubectl", kc, *args, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``helm --kubeconfig=<this cluster> args...``."""
        kc = f"--kubeconfig={self.kubeconfig}"
        return self.run("helm", kc, *args, input=input, check=check, timeout=timeout)

    def get_json(self, *args: str) -> Any:
        """``kubectl args... -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return that value.

    Raises ``TimeoutError`` (with the last exception raised by ``probe``, if
    any, chained) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last_exc
        time.sleep(interval)


def _script_env(name: str) -> dict[str, str]:
    return {**os.environ, "LAMINA_CLUSTER_NAME": name}


def bin_dir() -> Path:
    """The directory with kubectl, helm, kwokctl, ... (built on first use)."""
    out = subprocess.run(
        [str(TOOLS_SH), "--print-bin-dir"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/cluster-tools.sh failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def is_up(name: str = "lamina") -> bool:
    """True when the cluster's apiserver answers."""
    proc = subprocess.run(
        [str(CLUSTER_SH), "status"], env=_script_env(name), capture_output=True, check=False
    )
    return proc.returncode == 0


def up(name: str = "lamina") -> Cluster:
    """``hack/cluster.sh up`` (idempotent) and return a handle to the cluster."""
    proc = subprocess.run(
        [str(CLUSTER_SH), "up"], env=_script_env(name), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hack/cluster.sh up failed:\n{proc.stderr}\n{proc.stdout}")
    return handle(name)


def down(name: str = "lamina") -> None:
    """``hack/cluster.sh down``: delete the cluster and every process it started."""
    subprocess.run([str(CLUSTER_SH), "down"], env=_script_env(name), check=True)


def pids(name: str = "lamina") -> list[int]:
    """PIDs of the processes running cluster ``name`` (empty when it is down)."""
    out = subprocess.run(
        [str(CLUSTER_SH), "pids"], env=_script_env(name), capture_output=True, text=True, check=True
    ).stdout
    return sorted(int(p) for p in out.split())


def handle(name: str = "lamina") -> Cluster:
    """A :class:`Cluster` for ``name`` (does not check that it is up)."""
    kubeconfig = Path(
        subprocess.run(
            [str(CLUSTER_SH), "kubeconfig"],
            env=_script_env(name),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    bins = bin_dir()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{bins}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Cluster(name=name, kubeconfig=kubeconfig, bin_dir=bins, env=env)
