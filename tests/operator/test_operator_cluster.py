"""The operator against the real local cluster: what a user sees with kubectl."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kube_cluster import Cluster, wait_until
from operator_harness import OperatorProcess, StartOperator, condition, get, llmd

pytestmark = pytest.mark.cluster

# Drift (a deleted child, an edited pod template) is corrected from watch events; the
# bound a user can rely on, with margin for this 2-core machine.
DRIFT_BOUND_SECONDS = 15


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: int = 90) -> None:
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", f"llmd/{name}", f"--timeout={timeout}s"
    )


def test_create_gives_ready_children_on_gpu_nodes(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("llama", replicas=2))
    wait_ready(cluster, namespace, "llama")

    deployment = get(cluster, namespace, "deployment", "llama")
    service = get(cluster, namespace, "service", "llama")
    pdb = get(cluster, namespace, "pdb", "llama")
    for child in (deployment, service, pdb):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("LLMDeployment", "llama")
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lamina-operator"
    assert service["spec"]["ports"][0]["name"] == "http"

    pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/instance=llama")["items"]
    assert len(pods) == 2
    for pod in pods:
        node = get(cluster, "default", "node", pod["spec"]["nodeName"])
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert pod["status"]["phase"] == "Running"

    obj = get(cluster, namespace, "llmd", "llama")
    assert obj["status"]["ready"] == "2/2"
    assert obj["status"]["endpoint"] == f"http://llama.{namespace}.svc:8000"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["model"] == {"numLayers": 32, "hiddenSize": 4096, "source": "catalogue"}
    assert obj["metadata"]["finalizers"] == ["lamina.dev/finalizer"]

    table = cluster.kubectl("-n", namespace, "get", "llmd").stdout
    assert "meta-llama/Llama-3.1-8B-Instruct" in table
    assert "2/2" in table
    assert "AllReplicasReady" in table

    events = cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Created", "Ready"} <= reasons


def test_changing_the_model_rolls_the_deployment(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("m"))
    wait_ready(cluster, namespace, "m")
    before = get(cluster, namespace, "deployment", "m")["metadata"]["generation"]

    patch = {"spec": {"model": {"name": "Qwen/Qwen2.5-7B-Instruct"}, "engine": {"maxNumSeqs": 8}}}
    cluster.kubectl("-n", namespace, "patch", "llmd", "m", "--type=merge", "-p", json.dumps(patch))

    def rolled() -> dict[str, Any] | None:
        deployment = get(cluster, namespace, "deployment", "m")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        ok = "--model=Qwen/Qwen2.5-7B-Instruct" in args and "--max-num-seqs=8" in args
        return deployment if ok else None

    deployment = wait_until(rolled, timeout=30, what="new pod template")
    assert deployment["metadata"]["generation"] > before
    wait_ready(cluster, namespace, "m")
    obj = get(cluster, namespace, "llmd", "m")
    assert obj["status"]["model"]["hiddenSize"] == 3584


def test_drift_is_corrected(cluster: Cluster, namespace: str, run_operator: StartOperator) -> None:
    run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("d"))
    wait_ready(cluster, namespace, "d")
    original = get(cluster, namespace, "deployment", "d")["spec"]["template"]

    uid = get(cluster, namespace, "service", "d")["metadata"]["uid"]
    cluster.kubectl("-n", namespace, "delete", "service", "d")
    started = time.monotonic()
    wait_until(
        lambda: (
            (get(cluster, namespace, "service", "d") or {}).get("metadata", {}).get("uid")
            not in (None, uid)
        ),
        timeout=DRIFT_BOUND_SECONDS,
        what="Service recreated",
    )
    service_seconds = time.monotonic() - started

    edit = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil"}]}}}}
    cluster.kubectl("-n", namespace, "patch", "deployment", "d", "-p", json.dumps(edit))
    started = time.monotonic()
    wait_until(
        lambda: get(cluster, namespace, "deployment", "d")["spec"]["template"] == original,
        timeout=DRIFT_BOUND_SECONDS,
        what="pod template restored",
    )
    template_seconds = time.monotonic() - started
    print(f"restored: service in {service_seconds:.2f}s, template in {template_seconds:.2f}s")


def test_deleting_the_llmdeployment_garbage_collects_children(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("g", replicas=2))
    wait_ready(cluster, namespace, "g")
    cluster.kubectl("-n", namespace, "delete", "llmd", "g", "--timeout=60s")
    wait_until(
        lambda: all(
            get(cluster, namespace, kind, "g") is None for kind in ("deploy", "svc", "pdb")
        ),
        timeout=60,
        what="children garbage-collected",
    )
    wait_until(lambda: not get(cluster, namespace, "pods")["items"], timeout=60, what="pods gone")


def test_operator_down_then_up_converges_to_the_last_spec(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    first = run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("c"))
    wait_ready(cluster, namespace, "c")
    first.stop()

    for replicas, seqs in ((2, 16), (3, 32), (4, 64)):
        patch = {"spec": {"replicas": replicas, "engine": {"maxNumSeqs": seqs}}}
        cluster.kubectl(
            "-n", namespace, "patch", "llmd", "c", "--type=merge", "-p", json.dumps(patch)
        )
    generation = get(cluster, namespace, "llmd", "c")["metadata"]["generation"]

    run_operator(namespace)

    def converged() -> bool:
        deployment = get(cluster, namespace, "deployment", "c")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return deployment["spec"]["replicas"] == 4 and "--max-num-seqs=64" in args

    wait_until(converged, timeout=60, what="Deployment at the last spec")
    wait_ready(cluster, namespace, "c")
    status = get(cluster, namespace, "llmd", "c")["status"]
    assert status["observedGeneration"] == generation
    assert status["ready"] == "4/4"


def _touch(cluster: Cluster, namespace: str, name: str, value: str) -> None:
    cluster.kubectl("-n", namespace, "annotate", "--overwrite", "llmd", name, f"test/touch={value}")


def _reconciles(operator: OperatorProcess) -> float:
    return operator.metric("lamina_operator_reconcile_duration_seconds_count")


def touch_and_await_reconcile(
    cluster: Cluster, namespace: str, name: str, operator: OperatorProcess, value: str
) -> None:
    """Change an annotation (which wakes the reconcile) and wait until one has run."""
    before = _reconciles(operator)
    _touch(cluster, namespace, name, value)
    wait_until(lambda: _reconciles(operator) > before, timeout=30, what="a reconcile")


def test_autoscaled_replicas_are_never_reverted(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    operator = run_operator(namespace)
    auto = {"enabled": True, "autoscaler": "HPA", "minReplicas": 1, "maxReplicas": 5}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("a", autoscaling=auto))
    wait_ready(cluster, namespace, "a")
    hpa = get(cluster, namespace, "hpa", "a")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "LLMDeployment",
        "name": "a",
    }

    # The HPA writes through the scale subresource, exactly as `kubectl scale` does.
    cluster.kubectl("-n", namespace, "scale", "llmd/a", "--replicas=3")
    wait_until(
        lambda: get(cluster, namespace, "deployment", "a")["spec"]["replicas"] == 3,
        timeout=30,
        what="Deployment follows the scale subresource",
    )
    for i in range(5):
        touch_and_await_reconcile(cluster, namespace, "a", operator, str(i))
        assert get(cluster, namespace, "llmd", "a")["spec"]["replicas"] == 3
        assert get(cluster, namespace, "deployment", "a")["spec"]["replicas"] == 3
    wait_ready(cluster, namespace, "a")
    scale = get(cluster, namespace, "llmd", "a", "--subresource=scale")
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/instance=a,app.kubernetes.io/name=lamina-server"
    )

    off = {"spec": {"autoscaling": {"enabled": False}}}
    cluster.kubectl("-n", namespace, "patch", "llmd", "a", "--type=merge", "-p", json.dumps(off))
    wait_until(lambda: get(cluster, namespace, "hpa", "a") is None, timeout=30, what="HPA removed")


def test_suspend_scales_to_zero_and_deletes_nothing(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    run_operator(namespace)
    auto = {"enabled": True, "autoscaler": "HPA", "minReplicas": 1, "maxReplicas": 3}
    cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=llmd("s", replicas=2, autoscaling=auto)
    )
    wait_ready(cluster, namespace, "s")
    cluster.kubectl(
        "-n", namespace, "patch", "llmd", "s", "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )

    def suspended() -> bool:
        obj = get(cluster, namespace, "llmd", "s")
        return (
            condition(obj, "Ready").get("reason") == "Suspended" and obj["status"]["replicas"] == 0
        )

    wait_until(suspended, timeout=60, what="Suspended with 0 pods")
    assert get(cluster, namespace, "deployment", "s")["spec"]["replicas"] == 0
    for kind in ("service", "hpa", "pdb"):
        assert get(cluster, namespace, kind, "s") is not None, f"{kind} was deleted"


def test_an_idle_operator_writes_nothing(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    operator = run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("i", replicas=2))
    wait_ready(cluster, namespace, "i")
    wait_until(
        lambda: (
            condition(get(cluster, namespace, "llmd", "i"), "Progressing").get("status") == "False"
        ),
        timeout=30,
        what="rollout complete",
    )
    writes = {
        verb: operator.metric("lamina_operator_api_requests_total", verb=verb)
        for verb in ("PATCH", "DELETE")
    }
    for i in range(5):
        touch_and_await_reconcile(cluster, namespace, "i", operator, str(i))
    after = {
        verb: operator.metric("lamina_operator_api_requests_total", verb=verb) for verb in writes
    }
    assert after == writes


def test_kubectl_explain_reads_well(cluster: Cluster, crd: None) -> None:
    text = cluster.kubectl("explain", "llmd.spec.model").stdout
    assert "Hugging Face model id" in text
    assert "trustRemoteCode" in text
    scale_text = cluster.kubectl("explain", "llmd.spec.autoscaling.targetInFlightRequests").stdout
    assert "lamina_requests_in_flight" in scale_text
