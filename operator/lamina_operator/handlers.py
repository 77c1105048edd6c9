"""Thin kopf handlers. All the work is in `reconcile()`.

Why a daemon per LLMDeployment rather than create/update handlers: kopf's change
handlers are edge-triggered, but drift (a deleted Service, a hand-edited pod template)
and an HPA moving replicas must be corrected too. Each daemon runs `reconcile()`
whenever its object or one of its children changes, and every RESYNC_SECONDS anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from lamina_operator import leases, metrics
from lamina_operator.cost import seconds_to_next_refresh
from lamina_operator.identity import CHILD_RESOURCES, FIELD_MANAGER, Owner
from lamina_operator.kube import Kube, RejectedByApi, TransientApiError
from lamina_operator.reconcile import KnownState, Observed, PostEvent, Settings, reconcile
from lamina_operator.spec import API_GROUP, API_VERSION, KIND, PLURAL

RESYNC_SECONDS = 300.0
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
MANAGED = {"app.kubernetes.io/managed-by": FIELD_MANAGER}

ObjectKey = tuple[str, str]  # namespace, name


@dataclass
class Runtime:
    """What the handlers share within one operator process."""

    kube: Kube
    settings: Settings = field(default_factory=Settings)
    memory: KnownState = field(default_factory=KnownState)
    wakers: dict[ObjectKey, asyncio.Event] = field(default_factory=dict)
    costs: metrics.CostFigures = field(default_factory=metrics.CostFigures)

    def wake(self, key: ObjectKey) -> None:
        waker = self.wakers.get(key)
        if waker is not None:
            waker.set()


def configure(settings: kopf.OperatorSettings) -> None:
    """Framework settings: our own domain for finalizer and bookkeeping annotations."""
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Log lines stay logs; Events are posted on purpose by reconcile().
    settings.posting.level = logging.WARNING
    # Reconnect watches well before typical load-balancer idle timeouts.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    memo.runtime = Runtime(kube=await Kube.connect(), settings=memo.get("settings", Settings()))
    metrics.register_api_counter(memo.runtime.kube.requests)
    metrics.register_cost_figures(memo.runtime.costs)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.kube.close()


def _observed(body: kopf.Body) -> Observed:
    meta = body["metadata"]
    return Observed(
        owner=Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        generation=int(meta.get("generation", 0)),
        spec=dict(body.get("spec", {})),
        status=dict(body.get("status", {})),
        meta=dict(meta),
        resource_version=int(meta.get("resourceVersion", 0)),
    )


def _resync_wait(status: Mapping[str, Any], refresh_seconds: int) -> float:
    """Until the next resync; while the cost is accounted, until its figures move on
    (a little after, so that the clock has passed the boundary)."""
    if "cost" not in status:
        return RESYNC_SECONDS
    now = datetime.datetime.now(datetime.UTC)
    return min(RESYNC_SECONDS, seconds_to_next_refresh(now, refresh_seconds) + 0.05)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=10.0)
async def reconcile_forever(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Reconcile on every change of the object or its children, and periodically."""
    runtime: Runtime = memo.runtime
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    waker = runtime.wakers.setdefault(key, asyncio.Event())

    def post_event(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    delay = BACKOFF_FIRST_SECONDS
    try:
        while not stopped:
            waker.clear()
            started = time.perf_counter()
            try:
                # `body` is kopf's live view: always the latest object seen.
                await _end_expired_leases(runtime.kube, body, post_event)
                status = await reconcile(
                    runtime.kube,
                    runtime.memory,
                    _observed(body),
                    datetime.datetime.now(datetime.UTC),
                    post_event,
                    runtime.settings,
                )
                metrics.observe_reconcile("ok", time.perf_counter() - started)
                runtime.costs.record(key, status.get("cost"))
                wait = _resync_wait(status, runtime.settings.cost_refresh_seconds)
                delay = BACKOFF_FIRST_SECONDS
            except TransientApiError as error:
                metrics.observe_reconcile("retry", time.perf_counter() - started)
                logger.warning(f"will retry in {delay:.0f}s: {error}")
                wait, delay = delay, min(delay * 2, BACKOFF_MAX_SECONDS)
            except Exception:  # a bug: logged, retried; the daemon must outlive it
                metrics.observe_reconcile("error", time.perf_counter() - started)
                logger.exception(f"reconcile failed, will retry in {delay:.0f}s")
                wait, delay = delay, min(delay * 2, BACKOFF_MAX_SECONDS)
            # While backing off, changes wait for the backoff: they cannot fix the API.
            backing_off = delay > BACKOFF_FIRST_SECONDS
            expiry = leases.seconds_to_expiry(body["metadata"], datetime.datetime.now(datetime.UTC))
            if expiry is not None:  # a lease ends: put the deployment back, free its pod
                wait = min(wait, expiry + 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stopped.wait())}
                    if not backing_off:
                        waiters.add(asyncio.ensure_future(waker.wait()))
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
    finally:
        runtime.wakers.pop(key, None)
        runtime.memory.forget_deployment(key)
        runtime.costs.record(key, None)


async def _end_expired_leases(kube: Kube, body: kopf.Body, post_event: PostEvent) -> None:
    """A `lamina run` job that died cannot put its deployment back: do it for it."""
    meta = body["metadata"]
    patch = leases.overdue_restore(meta, datetime.datetime.now(datetime.UTC))
    if patch is None:
        return
    try:
        await kube.patch_own(meta["namespace"], meta["name"], patch)
    except RejectedByApi as error:  # an annotation edited by hand into nonsense
        post_event("Warning", "LeasesExpired", f"could not put the deployment back: {error}")
        return
    spec = patch.get("spec")
    post_event(
        "Normal",
        "LeasesExpired",
        "every lamina run lease expired without its job ending it; "
        + (
            f"put back suspend={spec['suspend']}, replicas={spec['replicas']}"
            if spec
            else "cleared"
        ),
    )


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
def llmdeployment_changed(
    type: str | None, namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any
) -> None:
    if not (namespace and name):
        return
    if type == "DELETED":
        memo.runtime.memory.forget_owner((namespace, name))
    else:
        memo.runtime.wake((namespace, name))


def _owner_name(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences", []):
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return str(ref["name"])
    return None


def _child_changed(kind: str, event: kopf.RawEvent, memo: kopf.Memo) -> None:
    obj = event["object"]
    meta = obj.get("metadata", {})
    owner = _owner_name(meta)
    if owner is None:
        return
    runtime: Runtime = memo.runtime
    key = (kind, meta["namespace"], meta["name"])
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        runtime.memory.cache.gone(key)
    else:
        runtime.memory.cache.seen(key, dict(obj))
    runtime.wake((meta["namespace"], owner))


def _watch_children() -> None:
    """One event handler per child kind: keep the cache fresh and wake the owner."""
    for kind, (group, version, plural) in CHILD_RESOURCES.items():

        def changed(event: kopf.RawEvent, memo: kopf.Memo, _kind: str = kind, **_: Any) -> None:
            _child_changed(_kind, event, memo)

        kopf.on.event(group, version, plural, labels=MANAGED, id=f"{plural}-changed")(changed)


_watch_children()

SERVER_PODS = {**MANAGED, "app.kubernetes.io/name": "lamina-server"}


@kopf.on.event("", "v1", "pods", labels=SERVER_PODS, id="server-pods-changed")
def server_pod_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Pods tell why servers restart (OOM, a failed start), which status reports, and
    a deleted pod's last state tells when it stopped, which the cost accounting needs."""
    pod = event["object"]
    meta = pod.get("metadata", {})
    owner = meta.get("labels", {}).get("app.kubernetes.io/instance")
    if not owner:
        return
    runtime: Runtime = memo.runtime
    key = (meta["namespace"], owner)
    gone = event.get("type") == "DELETED"
    # Only what status needs: name and container states.
    kept = {"metadata": {"name": meta["name"]}, "status": pod.get("status", {})}
    runtime.memory.pod_seen(key, meta["name"], None if gone else kept)
    if gone and key in runtime.wakers:  # pods of a deleted LLMDeployment need no account
        runtime.memory.pod_departed(key, meta["uid"], dict(pod))
    runtime.wake(key)
