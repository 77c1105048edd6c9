"""Bad LLMDeployments: refused at admission, or reported in status, with a message a user
understands. Each row asserts the message the user reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kube_cluster import Cluster, wait_until
from operator_harness import StartOperator

pytestmark = pytest.mark.cluster

MODEL = {"name": "meta-llama/Llama-3.1-8B-Instruct"}


def manifest(spec: dict[str, Any], name: str = "bad") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


ADMISSION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"replicas": 1}, "spec.model: Required value"),
    ("empty model name", {"model": {"name": ""}}, "spec.model.name in body should be at least 1"),
    (
        "negative replicas",
        {"model": MODEL, "replicas": -1},
        "spec.replicas in body should be greater than or equal to 0",
    ),
    (
        "zero tensor parallel",
        {"model": MODEL, "engine": {"tensorParallelSize": 0}},
        "spec.engine.tensorParallelSize in body should be greater than or equal to 1",
    ),
    (
        "gpu memory over 1",
        {"model": MODEL, "engine": {"gpuMemoryUtilization": 1.5}},
        "spec.engine.gpuMemoryUtilization in body should be less than or equal to 1",
    ),
    (
        "unknown pooling",
        {"model": MODEL, "hiddenStates": {"defaultPooling": "max"}},
        'Unsupported value: "max": supported values: "last", "mean", "all"',
    ),
    (
        "unknown dtype",
        {"model": {**MODEL, "dtype": "float8"}},
        'spec.model.dtype: Unsupported value: "float8"',
    ),
    (
        "min above max",
        {"model": MODEL, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    (
        "scale to zero without KEDA",
        {"model": MODEL, "autoscaling": {"enabled": True, "autoscaler": "HPA", "minReplicas": 0}},
        "autoscaling.minReplicas 0 (scale to zero) needs autoscaling.autoscaler KEDA",
    ),
    (
        "prometheus not a URL",
        {"model": MODEL, "autoscaling": {"prometheus": {"serverAddress": "prometheus:9090"}}},
        "spec.autoscaling.prometheus.serverAddress in body should match",
    ),
    ("misspelt field", {"model": MODEL, "replcas": 2}, 'unknown field "spec.replcas"'),
    (
        "two caches",
        {"model": MODEL, "modelCache": {"persistentVolumeClaim": "c", "emptyDirSizeLimit": "1Gi"}},
        "modelCache: set persistentVolumeClaim or emptyDirSizeLimit, not both",
    ),
    (
        "default layer not allowed",
        {"model": MODEL, "hiddenStates": {"defaultLayers": [-2], "allowedLayers": [0, 1]}},
        "every entry of defaultLayers must also be in allowedLayers",
    ),
    (
        "port out of range",
        {"model": MODEL, "service": {"port": 70000}},
        "spec.service.port in body should be less than or equal to 65535",
    ),
    (
        "startup budget too short",
        {"model": MODEL, "probes": {"startupTimeoutSeconds": 5}},
        "spec.probes.startupTimeoutSeconds in body should be greater than or equal to 60",
    ),
    (
        "two disruption limits",
        {"model": MODEL, "disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
        "disruptionBudget: set minAvailable or maxUnavailable, not both",
    ),
    (
        "too many GPUs",
        {"model": MODEL, "engine": {"tensorParallelSize": 8, "pipelineParallelSize": 16}},
        "tensorParallelSize × pipelineParallelSize must be at most 64 GPUs",
    ),
    (
        "parallel on cpu",
        {"model": MODEL, "resources": {"useGPU": False}, "engine": {"tensorParallelSize": 2}},
        "tensor or pipeline parallelism needs GPUs: set resources.useGPU to true",
    ),
    (
        "memory not a quantity",
        {"model": MODEL, "resources": {"requests": {"memory": "lots"}}},
        "spec.resources.requests.memory in body should match",
    ),
    (
        "negative price",
        {"model": MODEL, "cost": {"pricePerHour": -1}},
        "spec.cost.pricePerHour in body should be greater than or equal to 0",
    ),
    (
        "cost without a price",
        {"model": MODEL, "cost": {"monthlyBudget": 100}},
        "spec.cost.pricePerHour: Required value",
    ),
    (
        "currency not a code",
        {"model": MODEL, "cost": {"pricePerHour": 2, "currency": "dollars"}},
        "spec.cost.currency in body should match '^[A-Z]{3}$'",
    ),
    (
        "zero budget",
        {"model": MODEL, "cost": {"pricePerHour": 2, "monthlyBudget": 0}},
        "spec.cost.monthlyBudget in body should be greater than 0",
    ),
    (
        "suspend over no budget",
        {"model": MODEL, "cost": {"pricePerHour": 2, "suspendOverBudget": True}},
        "cost.suspendOverBudget needs cost.monthlyBudget",
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"),
    [pytest.param(spec, message, id=case) for case, spec, message in ADMISSION_CASES],
)
def test_refused_at_admission(
    cluster: Cluster, crd: None, namespace: str, spec: dict[str, Any], message: str
) -> None:
    proc = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=manifest(spec), check=False)
    assert proc.returncode != 0, "the API accepted a bad LLMDeployment"
    assert message in proc.stderr


def test_name_too_long_is_refused(cluster: Cluster, crd: None, namespace: str) -> None:
    proc = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=manifest({"model": MODEL}, "x" * 53), check=False
    )
    assert proc.returncode != 0
    assert "metadata.name must be at most 52 characters" in proc.stderr


STATUS_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "layer beyond the model",
        {"model": MODEL, "hiddenStates": {"defaultLayers": [40]}},
        "spec.hiddenStates.defaultLayers has layer 40, but meta-llama/Llama-3.1-8B-Instruct has "
        "32 layers: use an index from -32 to 31",
    ),
    (
        "toleration the API refuses",
        {"model": MODEL, "scheduling": {"tolerations": [{"key": "a", "operator": "Sometimes"}]}},
        "the API rejected the Deployment",
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"),
    [pytest.param(spec, message, id=case) for case, spec, message in STATUS_CASES],
)
def test_reported_in_status_and_events_without_retrying(
    cluster: Cluster,
    namespace: str,
    run_operator: StartOperator,
    spec: dict[str, Any],
    message: str,
) -> None:
    operator = run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=manifest(spec))

    def ready_condition() -> dict[str, Any] | None:
        obj = json.loads(
            cluster.kubectl("-n", namespace, "get", "llmd", "bad", "-o", "json").stdout
        )
        conditions = obj.get("status", {}).get("conditions", [])
        ready = next((c for c in conditions if c["type"] == "Ready"), None)
        return ready if ready and ready["reason"] == "InvalidSpec" else None

    ready = wait_until(ready_condition, timeout=30, what="Ready=False, reason=InvalidSpec")
    assert ready["status"] == "False"
    assert message in ready["message"]

    def warning_event() -> bool:
        events = json.loads(cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout)[
            "items"
        ]
        return any(e["reason"] == "InvalidSpec" and message in e["message"] for e in events)

    wait_until(warning_event, timeout=30, what="an InvalidSpec Event")
    # Not retried: an invalid spec is a status, not a failing reconcile.
    assert operator.metric("lamina_operator_reconcile_duration_seconds_count", result="retry") == 0
    # Nothing was created from a spec that cannot be served.
    assert cluster.kubectl("-n", namespace, "get", "deployment", "bad", check=False).returncode != 0
