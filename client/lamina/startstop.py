"""Start an LLMDeployment for a job and put it back after: ``lamina up / down / run``
and ``with lamina.running(...)``.

The decisions (leases, what to restore, when it is ready) are pure, in
:mod:`lamina.leases`; this module reads and patches the LLMDeployment with kubectl
and waits.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import leases
from .client import Client
from .deployment import Kubectl, for_deployment
from .errors import LaminaError, NotFound

DEFAULT_LEASE = datetime.timedelta(minutes=2)
DEFAULT_WAIT_TIMEOUT = 900.0  # seconds: pulling an image and loading a model take minutes
POLL_SECONDS = 2.0
CONFLICT_RETRIES = 20

Progress = Callable[[str], None]


class NotReady(LaminaError):
    """The deployment did not become ready in time."""

    hint = "see kubectl describe llmd NAME and the server pods' logs; or raise --timeout"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def holder_id() -> str:
    """Who holds a lease: user, host and process, plus a nonce for two holds in one."""
    return f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}.{secrets.token_hex(2)}"


class Deployment:
    """One LLMDeployment, read and patched through kubectl."""

    def __init__(
        self,
        name: str,
        namespace: str = "default",
        *,
        kubectl: str = "kubectl",
        context: str | None = None,
        now: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self.name, self.namespace, self.context = name, namespace, context
        self.kubectl = Kubectl(kubectl, context)
        self.now = now

    def get(self) -> dict[str, Any]:
        llmd = self.kubectl.get("llmd", self.name, self.namespace)
        if llmd is None:
            raise NotFound(
                f"no LLMDeployment {self.name!r} in namespace {self.namespace!r}",
                hint=f"list them with: kubectl get llmd -n {self.namespace}",
            )
        return llmd

    def update(self, change: Callable[[Mapping[str, Any]], leases.Patch]) -> None:
        """Patch with ``change(latest object)``, reading again when someone else wrote
        in between (the patch carries the resourceVersion it was computed from)."""
        for _ in range(CONFLICT_RETRIES):
            if self.kubectl.merge_patch("llmd", self.name, self.namespace, change(self.get())):
                return
        raise LaminaError(
            f"llmd/{self.name} kept changing under {CONFLICT_RETRIES} attempts to patch it",
            hint="something rewrites it continuously; check kubectl get llmd -w",
        )

    def wait_ready(
        self,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        progress: Progress = _stderr,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Poll until a pod serves the current spec, saying what changes meanwhile."""
        deadline = time.monotonic() + timeout
        said = ""
        while True:
            state = leases.readiness(self.get())
            if state.summary != said:
                progress(f"llmd/{self.name}: {state.summary}")
                said = state.summary
            if state.ready:
                return
            if time.monotonic() >= deadline:
                raise NotReady(f"llmd/{self.name} not ready after {timeout:g} s: {state.summary}")
            sleep(POLL_SECONDS)


def up(
    deployment: Deployment, *, wait: bool = False, timeout: float = DEFAULT_WAIT_TIMEOUT
) -> None:
    """Un-suspend (and scale from zero to one); it stays up after running jobs end."""
    holder = holder_id()
    deployment.update(lambda llmd: leases.up(llmd, holder, deployment.now(), ready=False))
    if wait:
        deployment.wait_ready(timeout)
        # Ready: one idle window from now, no longer the start-up allowance.
        deployment.update(lambda llmd: leases.up(llmd, holder, deployment.now(), ready=True))


def down(deployment: Deployment, *, force: bool = False) -> None:
    """Suspend: pods go, the Service and settings stay. Refuses while jobs hold it."""
    deployment.update(lambda llmd: leases.down(llmd, deployment.now(), force=force))


class _Renewer:
    """Renews a lease every third of its lifetime until stopped."""

    def __init__(self, renew: Callable[[], None], every: float, warn: Progress) -> None:
        self._stop = threading.Event()
        self._renew, self._every, self._warn = renew, every, warn
        self._thread = threading.Thread(target=self._run, name="lamina-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._renew()
            except LaminaError as error:  # the next renewal may succeed; say it meanwhile
                self._warn(f"lamina: could not renew the lease: {error}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def hold(
    deployment: Deployment,
    *,
    lease: datetime.timedelta = DEFAULT_LEASE,
    timeout: float = DEFAULT_WAIT_TIMEOUT,
    progress: Progress = _stderr,
) -> Iterator[None]:
    """Hold the deployment up (ready) for the block; put it back after, whatever
    happens in the block."""
    holder = holder_id()

    def acquire() -> None:
        deployment.update(lambda llmd: leases.acquire(llmd, holder, deployment.now(), lease))

    acquire()
    try:
        renewer = _Renewer(acquire, lease.total_seconds() / 3, progress)
        try:
            deployment.wait_ready(timeout, progress)
            yield
        finally:
            renewer.stop()
    finally:
        deployment.update(lambda llmd: leases.release(llmd, holder, deployment.now()))


@contextlib.contextmanager
def running(
    name: str,
    namespace: str = "default",
    *,
    lease: datetime.timedelta = DEFAULT_LEASE,
    timeout: float = DEFAULT_WAIT_TIMEOUT,
    kubectl: str = "kubectl",
    context: str | None = None,
    **client_kwargs: Any,
) -> Iterator[Client]:
    """``with lamina.running("my-llm", "team") as client:`` starts LLMDeployment
    ``my-llm`` if it is suspended or at zero, waits until it serves, gives a client
    of it, and puts it back as it was when the block ends (other jobs holding it keep
    it up until they end too)."""
    deployment = Deployment(name, namespace, kubectl=kubectl, context=context)
    with (
        hold(deployment, lease=lease, timeout=timeout),
        for_deployment(
            name, namespace, kubectl=kubectl, context=context, **client_kwargs
        ) as client,
    ):
        yield client
