"""A client for an LLMDeployment by name.

Inside a cluster (``KUBERNETES_SERVICE_HOST`` set) the Service's DNS name is used
directly: the operator names the Service after the LLMDeployment, and pods seldom
have kubectl or the RBAC to read LLMDeployments (pass ``port=`` when
``spec.service.port`` is not 8000). Outside, kubectl finds the Service and its
``http`` port and ``kubectl port-forward`` carries the traffic; closing the client
stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .client import AsyncClient, Client
from .errors import ConnectionFailed, NotFound

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"
DEFAULT_PORT = 8000
FORWARD_TIMEOUT = 30.0  # seconds for kubectl port-forward to say it listens
KUBECTL_TIMEOUT = 30.0
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


# -- decisions (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRef:
    name: str
    port: int | None  # when the LLMDeployment's status says it


def service_of(name: str, llmd: Mapping[str, Any]) -> ServiceRef:
    """The Service of an LLMDeployment: from its status (``endpoint``, the in-cluster
    URL the operator writes, or a ``service`` name) or else its own name."""
    status = llmd.get("status") or {}
    endpoint = status.get("endpoint") or status.get("url")
    if isinstance(endpoint, str) and endpoint:
        parts = urlsplit(endpoint)
        if parts.hostname:
            return ServiceRef(parts.hostname.split(".")[0], parts.port)
    service = status.get("service")
    if isinstance(service, dict):
        service = service.get("name")
    return ServiceRef(service if isinstance(service, str) and service else name, None)


def http_port(service: Mapping[str, Any]) -> int:
    """The Service's port named ``http`` (the operator's), else its only port."""
    ports = (service.get("spec") or {}).get("ports") or []
    for p in ports:
        if p.get("name") == "http":
            return int(p["port"])
    if len(ports) == 1:
        return int(ports[0]["port"])
    name = (service.get("metadata") or {}).get("name", "?")
    raise ConnectionFailed(
        f"Service {name} has no port named 'http' among {len(ports)} ports",
        hint="pass port= with the server's Service port",
    )


def forwarded_port(line: str) -> int | None:
    """The local port in kubectl port-forward's ``Forwarding from 127.0.0.1:N -> M``."""
    match = _FORWARDING.search(line)
    return int(match.group(1)) if match else None


def in_cluster_url(name: str, namespace: str, port: int | None) -> str:
    return f"http://{name}.{namespace}.svc:{port or DEFAULT_PORT}"


# -- kubectl (I/O) ---------------------------------------------------------------


class Kubectl:
    def __init__(self, kubectl: str = "kubectl", context: str | None = None) -> None:
        path = shutil.which(kubectl)
        if path is None:
            raise ConnectionFailed(
                f"kubectl not found (looked for {kubectl!r})",
                hint="install kubectl or pass kubectl='/path/to/kubectl'; "
                "or give the server's URL (--url / Client(url)) instead of a deployment",
            )
        self.prefix = [path, *(["--context", context] if context else [])]

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.prefix, *args],
                capture_output=True,
                text=True,
                timeout=KUBECTL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConnectionFailed(
                f"kubectl {' '.join(args)} did not answer within {KUBECTL_TIMEOUT:g} s",
                hint="check that the cluster is reachable (kubectl cluster-info)",
            ) from None

    def _failed(self, args: list[str], proc: subprocess.CompletedProcess[str]) -> ConnectionFailed:
        return ConnectionFailed(
            f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}",
            hint="check kubectl's context and your access to the namespace",
        )

    def _json(self, args: list[str]) -> dict[str, Any] | None:
        """kubectl's JSON answer; None when it says NotFound."""
        proc = self._run(args)
        if proc.returncode != 0:
            if "(NotFound)" in proc.stderr:
                return None
            raise self._failed(args, proc)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The object as JSON; None when it does not exist."""
        return self._json(["get", kind, name, "-n", namespace, "-o", "json"])

    def get_all(self, kind: str, namespace: str | None, all_namespaces: bool = False) -> list[Any]:
        """The objects of a kind: in one namespace (None: kubectl's current one) or all."""
        scope = ["-A"] if all_namespaces else ["-n", namespace] if namespace else []
        found = self._json(["get", kind, *scope, "-o", "json"])
        return list((found or {}).get("items", []))

    def merge_patch(self, kind: str, name: str, namespace: str, patch: Any) -> bool:
        """Apply a JSON merge patch; False when the API refused it as stale (409: the
        object changed since it was read; read it again)."""
        args = ["patch", kind, name, "-n", namespace, "--type", "merge", "-p", json.dumps(patch)]
        proc = self._run(args)
        if proc.returncode == 0:
            return True
        if "(Conflict)" in proc.stderr:
            return False
        raise self._failed(args, proc)


def _terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PortForward:
    """``kubectl port-forward`` to a Service on a free local port, until :meth:`stop`
    (or interpreter exit)."""

    def __init__(
        self,
        kubectl: Kubectl,
        namespace: str,
        service: str,
        port: int,
        timeout: float = FORWARD_TIMEOUT,
    ) -> None:
        args = ["port-forward", "-n", namespace, f"svc/{service}", f"0:{port}"]
        self._proc = subprocess.Popen(
            [*kubectl.prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stop = weakref.finalize(self, _terminate, self._proc)
        self._stderr: list[str] = []
        ports: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(ports,), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        try:
            local = ports.get(timeout=timeout)
        except queue.Empty:
            local = None
        if local is None:
            self.stop()
            self._stderr_reader.join(timeout=2)
            said = "".join(self._stderr).strip() or "(nothing on stderr)"
            raise ConnectionFailed(
                f"kubectl {' '.join(args)} did not start forwarding within {timeout:g} s: {said}",
                hint="check that the Service has ready pods (kubectl get pods -n "
                f"{namespace}) and your access to port-forward",
            )
        self.port = local
        self.url = f"http://127.0.0.1:{local}"

    def _read_stdout(self, ports: queue.Queue[int | None]) -> None:
        assert self._proc.stdout is not None
        found = False
        # Read to the end: kubectl logs each connection here, and a full pipe would stall it.
        for line in self._proc.stdout:
            port = forwarded_port(line)
            if port is not None and not found:
                found = True
                ports.put(port)
        if not found:
            ports.put(None)

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def stop(self) -> None:
        self._stop()


# -- entry points ----------------------------------------------------------------


def connect(
    name: str,
    namespace: str,
    *,
    port: int | None,
    kubectl: str,
    context: str | None,
    environ: Mapping[str, str],
) -> tuple[str, Callable[[], None] | None]:
    """The base URL of LLMDeployment ``name`` and what stops its port-forward."""
    if environ.get(IN_CLUSTER_ENV):
        return in_cluster_url(name, namespace, port), None
    cli = Kubectl(kubectl, context)
    llmd = cli.get("llmd", name, namespace)
    if llmd is None:
        raise NotFound(
            f"no LLMDeployment {name!r} in namespace {namespace!r}",
            hint=f"list them with: kubectl get llmd -n {namespace}",
        )
    ref = service_of(name, llmd)
    if port is None:
        service = cli.get("svc", ref.name, namespace)
        if service is None:
            raise NotFound(
                f"LLMDeployment {name!r} has no Service {ref.name!r} in namespace {namespace!r}",
                hint=f"the operator creates it; see kubectl describe llmd {name} -n {namespace}",
            )
        port = http_port(service)
    forward = PortForward(cli, namespace, ref.name, port)
    return forward.url, forward.stop


def for_deployment(
    name: str,
    namespace: str = "default",
    *,
    port: int | None = None,
    kubectl: str = "kubectl",
    context: str | None = None,
    **client_kwargs: Any,
) -> Client:
    """A :class:`Client` of LLMDeployment ``name``; ``close()`` stops its port-forward."""
    url, stop = connect(
        name, namespace, port=port, kubectl=kubectl, context=context, environ=os.environ
    )
    try:
        return Client(url, on_close=stop, **client_kwargs)
    except BaseException:
        if stop is not None:
            stop()
        raise


async def async_for_deployment(
    name: str,
    namespace: str = "default",
    *,
    port: int | None = None,
    kubectl: str = "kubectl",
    context: str | None = None,
    **client_kwargs: Any,
) -> AsyncClient:
    """:func:`for_deployment` for :class:`AsyncClient` (kubectl runs in a thread)."""
    url, stop = await asyncio.to_thread(
        connect,
        name,
        namespace,
        port=port,
        kubectl=kubectl,
        context=context,
        environ=dict(os.environ),
    )
    try:
        return AsyncClient(url, on_close=stop, **client_kwargs)
    except BaseException:
        if stop is not None:
            stop()
        raise
