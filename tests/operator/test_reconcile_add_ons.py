"""A cluster without KEDA: the rest is applied and status says what to install.

A focused test with a fake API (which kinds exist is the point; the shared test
cluster may or may not have KEDA's CRDs)."""

from __future__ import annotations

import datetime
from typing import Any

from lamina_operator.identity import Manifest, Owner
from lamina_operator.kube import NotServed
from lamina_operator.reconcile import KnownState, Observed, Settings, reconcile
from lamina_operator.spec import PrometheusSource


class ApiWithoutKeda:
    def __init__(self) -> None:
        self.applied: list[str] = []
        self.status: Manifest = {}

    async def apply(self, manifest: Manifest) -> Manifest:
        if manifest["kind"] == "ScaledObject":
            raise NotServed("the API serves no ScaledObject here")
        self.applied.append(manifest["kind"])
        return {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1"}}

    async def patch_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.status = status


async def test_without_keda_the_servers_are_applied_and_status_says_install_keda() -> None:
    api = ApiWithoutKeda()
    events: list[tuple[str, str, str]] = []
    observed = Observed(
        owner=Owner(name="m", namespace="ns", uid="u"),
        generation=1,
        spec={"model": {"name": "m"}, "autoscaling": {"enabled": True}},
        status={},
    )
    settings = Settings(prometheus=PrometheusSource(server_address="http://prom:9090"))
    now = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    kube: Any = api
    await reconcile(kube, KnownState(), observed, now, lambda *e: events.append(e), settings)
    assert api.applied == ["Deployment", "Service", "PodDisruptionBudget"]
    degraded = next(c for c in api.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "AutoscalingUnavailable")
    assert "install KEDA" in degraded["message"]
