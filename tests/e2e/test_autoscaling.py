"""Autoscaling on real load, on the real node: KEDA reads the servers' in-flight
requests from Prometheus and scales the LLMDeployment (its scale subresource).

The cluster flavour with Prometheus and KEDA (hack/keda.sh) is started here if it
does not run. Timings are shortened for the test (5 s polls and scrapes, 30 s
windows); the timeline of replicas and in-flight requests is printed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.real_node import (
    Load,
    ModelVolume,
    condition,
    create_restricted_namespace,
    is_ready,
    load_images,
    server_pods,
    service_url,
    wait_for,
)
from kube_cluster import REPO, Cluster
from metrics_text import scrape, total
from tiny_model import TinyModelSpec, ensure_tiny_model

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAME = "scaled"
SERVED = "tiny-llama"
KEDA_SH = REPO / "hack" / "keda.sh"
START_TIMEOUT = 600
# What a user of this 2-core machine can count on (each bound has slack for the noise).
SCALE_UP_SECONDS = 120  # load starts -> the autoscaler asks for a second pod
SCALE_DOWN_SECONDS = 180  # load stops -> back to one pod
TO_ZERO_SECONDS = 180  # idle with minReplicas 0 -> no pod
PROMPTS = {"prompts": ["What is AI?", "Kubernetes runs containers in pods."], "layers": [-2]}


@dataclass
class Timeline:
    """Replicas (asked, ready) and in-flight requests over time, sampled every 2 s."""

    cluster: Cluster
    namespace: str
    prometheus: str
    rows: list[tuple[float, int, int, str, str]] = field(default_factory=list)
    phase: str = "start"
    _stop: threading.Event = field(default_factory=threading.Event)

    def _in_flight(self) -> str:
        query = f'sum(lamina_requests_in_flight{{namespace="{self.namespace}"}})'
        try:
            answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": query}).json()
            results = answer["data"]["result"]
            return results[0]["value"][1] if results else "-"
        except (httpx.HTTPError, KeyError, ValueError):
            return "?"

    def _sample(self, start: float) -> None:
        while not self._stop.wait(2.0):
            llmd = self.cluster.get_json("-n", self.namespace, "get", "llmd", NAME)
            pods = server_pods(self.cluster, self.namespace, NAME)
            ready = sum(1 for p in pods if is_ready(p))
            asked = int(llmd["spec"].get("replicas", 0))
            row = (time.monotonic() - start, asked, ready, self._in_flight(), self.phase)
            self.rows.append(row)

    def run(self) -> None:
        threading.Thread(target=self._sample, args=(time.monotonic(),), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def print(self) -> None:
        print("\n  t (s)  replicas  ready  in-flight  phase")
        last: tuple[Any, ...] = ()
        for t, asked, ready, in_flight, phase in self.rows:
            if (asked, ready, in_flight, phase) != last:  # changes only
                print(f"{t:7.0f}  {asked:8d}  {ready:5d}  {in_flight:>9}  {phase}")
                last = (asked, ready, in_flight, phase)


@dataclass(frozen=True)
class Scaled:
    cluster: Cluster
    namespace: str
    url: str
    timeline: Timeline

    def llmd(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.cluster.get_json("-n", self.namespace, "get", "llmd", NAME)
        return obj

    def ready_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in server_pods(self.cluster, self.namespace, NAME)
            if is_ready(p) and not p["metadata"].get("deletionTimestamp")
        ]

    def patch(self, autoscaling: dict[str, Any]) -> None:
        body = json.dumps({"spec": {"autoscaling": autoscaling}})
        self.cluster.kubectl(
            "-n", self.namespace, "patch", "llmd", NAME, "--type=merge", "-p", body
        )


@contextmanager
def keda_flavour(cluster: Cluster) -> Iterator[dict[str, str]]:
    """Prometheus and KEDA (cached builds) for the module, left running if they were."""

    def keda(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEDA_SH), *args], env=cluster.env, capture_output=True, text=True, check=check
        )

    was_up = keda("status", check=False).returncode == 0
    began = time.monotonic()
    started = keda("up", check=False)
    assert started.returncode == 0, f"hack/keda.sh up failed:\n{started.stderr[-3000:]}"
    print(f"\nautoscaling flavour up in {time.monotonic() - began:.0f} s (was up: {was_up})")
    try:
        yield dict(line.split("=", 1) for line in keda("env").stdout.split() if "=" in line)
    finally:
        if not was_up:
            keda("down", check=False)


def the_manifest(model: str) -> dict[str, Any]:
    llmd: dict[str, Any] = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
    llmd["metadata"]["name"] = NAME
    spec = llmd["spec"]
    spec["model"]["name"] = model
    spec["model"]["servedName"] = SERVED
    spec["modelCache"] = {"persistentVolumeClaim": "models"}
    # The load keeps its connections, as SDKs do: they reach a new pod when the old
    # one closes them after its share of answers.
    spec.setdefault("service", {})["maxRequestsPerConnection"] = 10
    spec["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetInFlightRequests": "2",
        "pollingIntervalSeconds": 5,
        "scaleToZeroAfterSeconds": 30,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
    }
    return llmd


@pytest.fixture(scope="module")
def scaled(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Scaled]:
    with keda_flavour(cluster) as settings:
        yield from _scaled(cluster, request, settings)


def _scaled(
    cluster: Cluster, request: pytest.FixtureRequest, settings: dict[str, str]
) -> Iterator[Scaled]:
    load_images("operator", "server-cpu")
    model = ensure_tiny_model(TinyModelSpec(arch="llama", max_positions=2048))
    ns = f"e2e-scale-{secrets.token_hex(3)}"
    create_restricted_namespace(cluster, ns)
    volume = ModelVolume.create(cluster, ns, {SERVED: model})
    timeline = Timeline(cluster, ns, settings["PROMETHEUS_URL"])
    try:
        cluster.helm(
            "install", "lamina", str(REPO / "charts" / "lamina"), "--namespace", ns,
            "--set", "logFormat=plain", "--wait", "--timeout", "5m", "--force-conflicts",
            "--set", f"autoscaling.prometheus.serverAddress={settings['PROMETHEUS_URL']}",
        )  # fmt: skip
        manifest = json.dumps(the_manifest(f"/cache/models/{SERVED}"))
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=manifest)
        cluster.kubectl(
            "-n", ns, "wait", "--for=condition=Ready", f"llmd/{NAME}",
            f"--timeout={START_TIMEOUT}s", timeout=START_TIMEOUT + 30,
        )  # fmt: skip
        timeline.run()
        yield Scaled(cluster, ns, service_url(cluster, ns, NAME), timeline)
    finally:
        timeline.stop()
        # The timeline is a result: shown even when the tests pass.
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            timeline.print()
        for what in ("llmd", "scaledobject", "hpa", "pods", "events"):
            print(cluster.kubectl("-n", ns, "get", what, "-o", "wide", check=False).stdout)
        cluster.kubectl("-n", ns, "delete", "llmd", "--all", "--timeout=120s", check=False)
        cluster.helm("uninstall", "lamina", "-n", ns, "--wait", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        volume.delete()


def _load(scaled: Scaled, workers: int) -> Load:
    """``workers`` clients sending without pause, each on its own keep-alive connection."""
    return Load(url=f"{scaled.url}/v1/hidden_states", body=PROMPTS, headers={}, workers=workers)


def _requests_served(pod: dict[str, Any]) -> float:
    """The pod's own count of answered hidden-state requests (its /metrics)."""
    text = scrape(f"http://{pod['status']['podIP']}:8000")
    return total(text, "lamina_requests_total", route="/v1/hidden_states")


def test_load_scales_up_and_the_new_pod_takes_traffic(scaled: Scaled) -> None:
    (first,) = scaled.ready_pods()
    scaled.timeline.phase = "load x8"
    began = time.monotonic()
    with _load(scaled, workers=8).running() as load:
        wait_for(
            lambda: scaled.llmd()["spec"]["replicas"] >= 2, SCALE_UP_SECONDS, "a second replica"
        )
        asked_after = time.monotonic() - began
        wait_for(lambda: len(scaled.ready_pods()) >= 2, START_TIMEOUT, "the second pod ready")
        (new,) = [
            p for p in scaled.ready_pods() if p["metadata"]["uid"] != first["metadata"]["uid"]
        ]
        wait_for(lambda: _requests_served(new) > 0, 60, "requests answered by the new pod")
    print(f"\nscaled up: a second replica asked {asked_after:.0f} s after the load began")
    assert load.failures == [], f"failed requests: {load.failures} ({dict(load.outcomes)})"


def test_after_the_load_it_scales_back_to_one_without_failing_a_request(
    scaled: Scaled,
) -> None:
    scaled.timeline.phase = "load x1"
    began = time.monotonic()
    # One request at a time stays under the target (2 per pod): one pod suffices.
    with _load(scaled, workers=1).running() as load:
        wait_for(
            lambda: (
                scaled.llmd()["spec"]["replicas"] == 1
                and len(server_pods(scaled.cluster, scaled.namespace, NAME)) == 1
            ),
            SCALE_DOWN_SECONDS,
            "back to one pod",
        )
        print(f"\nscaled down: one pod {time.monotonic() - began:.0f} s after the load fell")
        load.wait_for_requests(5)
    assert load.failures == [], f"failed during scale-down: {load.failures}"
    assert load.outcomes["200"] >= 5


def test_idle_goes_to_zero_and_lamina_up_wakes_it(scaled: Scaled, tmp_path: Path) -> None:
    scaled.timeline.phase = "idle, min 0"
    began = time.monotonic()
    scaled.patch({"minReplicas": 0})
    wait_for(
        lambda: (
            scaled.llmd()["spec"]["replicas"] == 0
            and not server_pods(scaled.cluster, scaled.namespace, NAME)
        ),
        TO_ZERO_SECONDS,
        "scaled to zero",
    )
    print(f"\nscaled to zero {time.monotonic() - began:.0f} s after the last request")
    llmd = scaled.llmd()
    assert condition(llmd, "Ready")["reason"] == "ScaledToZero"
    assert condition(llmd, "Degraded")["status"] == "False"
    table = scaled.cluster.kubectl("-n", scaled.namespace, "get", "llmd", NAME).stdout
    assert "ScaledToZero" in table
    assert scaled.cluster.get_json("-n", scaled.namespace, "get", "service", NAME)

    scaled.timeline.phase = "lamina up"
    env = {
        **scaled.cluster.env,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("client", "server", "operator")),
    }
    up = subprocess.run(
        [sys.executable, "-m", "lamina", "up", NAME, "-n", scaled.namespace, "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert up.returncode == 0, up.stderr
    answer = httpx.post(f"{scaled.url}/v1/hidden_states", json=PROMPTS, timeout=120)
    assert answer.status_code == 200, answer.text
