"""What the operator keeps of deleted LLMDeployments, and what a failing status write
or an unexpected error does to the reconcile loop (a fake API: the failures are the
point, and a real API server does not produce them on demand)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import kopf
import pytest
from lamina_operator import handlers
from lamina_operator.identity import Manifest, Owner
from lamina_operator.kube import RejectedByApi, TransientApiError
from lamina_operator.reconcile import KnownState, Observed, reconcile

NOW = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)
SPEC = {"model": {"name": "m"}}


def observed(name: str = "m") -> Observed:
    return Observed(
        owner=Owner(name=name, namespace="ns", uid=f"u-{name}"), generation=1, spec=SPEC, status={}
    )


class FakeApi:
    """Stores what is applied; ``status_errors`` are raised by the next status writes."""

    def __init__(self, *status_errors: BaseException) -> None:
        self.status_errors = list(status_errors)
        self.status: Manifest = {}
        self.status_writes = 0
        self.status_stored = asyncio.Event()

    async def apply(self, manifest: Manifest) -> Manifest:
        return {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1"}}

    async def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        return []

    async def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        self.status_writes += 1
        if self.status_errors:
            raise self.status_errors.pop(0)
        self.status = status
        self.status_stored.set()
        return {"metadata": {"resourceVersion": "2"}, "status": status}


def child_event(kind_type: str, owner: str, child: str, **meta: Any) -> kopf.RawEvent:
    ref = {"apiVersion": "lamina.dev/v1alpha1", "kind": "LLMDeployment", "name": owner}
    metadata = {"name": child, "namespace": "ns", "ownerReferences": [ref], **meta}
    event: kopf.RawEvent = {"type": kind_type, "object": {"metadata": metadata}}  # type: ignore[typeddict-item]
    return event


class Memo:
    def __init__(self, kube: Any) -> None:
        self.runtime = handlers.Runtime(kube=kube)


async def test_a_deleted_llmdeployment_leaves_nothing_in_memory() -> None:
    api: Any = FakeApi()
    memo: Any = Memo(api)
    memory = memo.runtime.memory
    for name in ("a", "b"):
        await reconcile(api, memory, observed(name), NOW, lambda *e: None)
        memory.pod_seen(("ns", name), f"{name}-pod", {"metadata": {"name": f"{name}-pod"}})
    assert {k[2] for k in memory.applied} == {"a", "b"}

    deleted: Any = handlers.llmdeployment_changed  # kopf's decorator types it as a handler
    deleted(type="DELETED", namespace="ns", name="a", memo=memo)
    # the garbage collector's last updates of a's children arrive after a is gone
    handlers._child_changed(
        "Deployment", child_event("MODIFIED", "a", "a", deletionTimestamp="x"), memo
    )

    assert {k[2] for k in memory.applied} == {"b"}
    assert {k[2] for k in memory.cache.objects} == {"b"}
    assert list(memory.pods) == [("ns", "b")]


async def test_a_status_the_api_rejects_is_an_event_not_a_crash() -> None:
    api: Any = FakeApi(RejectedByApi("status.conditions: Invalid value"))
    events: list[tuple[str, str, str]] = []
    status = await reconcile(api, KnownState(), observed(), NOW, lambda *e: events.append(e))
    assert status["conditions"]  # computed all the same
    assert ("Warning", "StatusRejected") in [(e[0], e[1]) for e in events]
    assert "Invalid value" in next(e[2] for e in events if e[1] == "StatusRejected")


class Stopped:
    """kopf's DaemonStopped, set by the test."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


@pytest.mark.parametrize(
    "failure", [TransientApiError("etcd timeout"), KeyError("a bug")], ids=["transient", "bug"]
)
async def test_the_reconcile_loop_outlives_a_failing_status_write(
    failure: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "BACKOFF_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(handlers, "kopf", _NoEvents(kopf))
    api = FakeApi(failure)
    memo: Any = Memo(api)
    stopped = Stopped()
    body: Any = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}, "spec": SPEC}
    logger: Any = _Logger()
    reconcile_forever: Any = handlers.reconcile_forever  # kopf types it as a daemon
    daemon = asyncio.ensure_future(
        reconcile_forever(stopped=stopped, body=body, memo=memo, logger=logger)
    )
    try:
        async with asyncio.timeout(10):
            await api.status_stored.wait()  # written on the retry after the failure
    finally:
        stopped.event.set()
        await daemon
    assert api.status_writes == 2
    assert logger.lines
    assert str(failure.args[0]) in logger.lines[0]


class _NoEvents:
    """The kopf module, minus posting events (no API behind this test)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def event(*args: Any, **kwargs: Any) -> None:
        return None


class _Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str) -> None:
        self.lines.append(message)

    def exception(self, message: str) -> None:
        import sys

        self.lines.append(f"{message}: {sys.exc_info()[1]!r}")
