"""The local cluster is a real Kubernetes control plane, not a mock.

Each test asserts something a user of the cluster would notice: the pinned
version answers, controllers and the scheduler act, admission and RBAC refuse.
"""

from __future__ import annotations

import json
from typing import Any

import kube_cluster
import pytest
from kube_cluster import Cluster, wait_until

pytestmark = pytest.mark.cluster

GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"


def pinned(var: str) -> str:
    for line in (kube_cluster.REPO / "hack" / "tools.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == var:
            return value.strip()
    raise KeyError(var)


def test_apiserver_reports_pinned_version(cluster: Cluster) -> None:
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == pinned("KUBE_VERSION")
    assert info["clientVersion"]["gitVersion"] == pinned("KUBE_VERSION")


def test_gpu_nodes_are_ready(cluster: Cluster) -> None:
    nodes = cluster.get_json("get", "nodes", "-l", f"nvidia.com/gpu.product={GPU_PRODUCT}")
    assert len(nodes["items"]) >= 4
    for node in nodes["items"]:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_deployment_pods_scheduled_on_gpu_nodes_become_ready(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: gpu-app}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: gpu-app}}}}
  template:
    metadata: {{labels: {{app: gpu-app}}}}
    spec:
      nodeSelector: {{nvidia.com/gpu.product: {GPU_PRODUCT}}}
      tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]
      containers:
      - name: main
        image: registry.invalid/never-pulled:1
        resources:
          limits: {{nvidia.com/gpu: 1}}
""",
    )

    def ready_pods() -> list[dict[str, Any]] | None:
        pods: list[dict[str, Any]] = cluster.get_json(
            "-n", namespace, "get", "pods", "-l", "app=gpu-app"
        )["items"]
        ok = [
            p
            for p in pods
            if p["status"].get("phase") == "Running"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]
        return ok if len(ok) == 2 else None

    pods = wait_until(ready_pods, timeout=90, what="2 Running+Ready pods")
    gpu_nodes = {
        n["metadata"]["name"]
        for n in cluster.get_json("get", "nodes", "-l", f"nvidia.com/gpu.product={GPU_PRODUCT}")[
            "items"
        ]
    }
    for pod in pods:
        assert pod["spec"]["nodeName"] in gpu_nodes
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet"
    (rs,) = cluster.get_json("-n", namespace, "get", "replicasets", "-l", "app=gpu-app")["items"]
    assert rs["metadata"]["ownerReferences"][0]["name"] == "gpu-app"
    deployment = wait_until(
        lambda: (
            d
            if (d := cluster.get_json("-n", namespace, "get", "deployment", "gpu-app"))[
                "status"
            ].get("readyReplicas")
            == 2
            else None
        ),
        timeout=60,
        what="deployment readyReplicas=2",
    )
    assert deployment["status"]["availableReplicas"] == 2


def test_deleting_owner_garbage_collects_dependent(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    uid = cluster.get_json("-n", namespace, "get", "configmap", "owner")["metadata"]["uid"]
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "-f",
        "-",
        input=f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences:
  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}
data: {{k: v}}
""",
    )
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait_until(
        lambda: (
            "NotFound"
            in cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False).stderr
        ),
        timeout=60,
        what="garbage collection of the dependent ConfigMap",
    )


def test_pod_security_restricted_refuses_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    proc = cluster.kubectl(
        "-n",
        namespace,
        "create",
        "-f",
        "-",
        check=False,
        input="""
apiVersion: v1
kind: Pod
metadata: {name: root}
spec:
  containers:
  - name: main
    image: registry.invalid/never-pulled:1
    securityContext: {privileged: true}
""",
    )
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr
    assert 'violates PodSecurity "restricted:latest"' in proc.stderr
    assert "privileged" in proc.stderr
    assert "NotFound" in cluster.kubectl("-n", namespace, "get", "pod", "root", check=False).stderr


def test_rbac_forbids_service_account_without_binding(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    as_sa = f"--as=system:serviceaccount:{namespace}:nobody"
    proc = cluster.kubectl("-n", namespace, "get", "pods", as_sa, check=False)
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr
    assert 'cannot list resource "pods"' in proc.stderr

    # ... and a RoleBinding is what lets it in: RBAC, not a blanket deny.
    cluster.kubectl(
        "-n", namespace, "create", "role", "read-pods", "--verb=list", "--resource=pods"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=read-pods",
        f"--serviceaccount={namespace}:nobody",
    )
    wait_until(
        lambda: cluster.kubectl("-n", namespace, "get", "pods", as_sa, check=False).returncode == 0,
        timeout=30,
        what="the RoleBinding to take effect",
    )


def test_up_twice_is_harmless(cluster: Cluster, namespace: str) -> None:
    before = kube_cluster.pids(cluster.name)
    assert before, "no processes found for the session cluster"
    again = kube_cluster.up(cluster.name)
    assert again.kubeconfig == cluster.kubeconfig
    assert kube_cluster.pids(cluster.name) == before, "up restarted the control plane"
    # state survives: the test's namespace is still there
    cluster.kubectl("get", "namespace", namespace)


def test_down_leaves_no_process_behind(cluster: Cluster) -> None:
    name = "lamina-downtest"
    other = kube_cluster.up(name)
    try:
        assert other.kubeconfig != cluster.kubeconfig
        assert kube_cluster.pids(name), "second cluster has no processes"
        assert other.kubectl("get", "nodes").returncode == 0
    finally:
        kube_cluster.down(name)
    assert kube_cluster.pids(name) == []
    assert not other.kubeconfig.exists()
    # the session cluster is untouched
    cluster.kubectl("get", "--raw", "/readyz")


def test_hpa_controller_enforces_min_replicas(cluster: Cluster, namespace: str) -> None:
    # No metrics API here, but the real HPA controller still clamps the
    # replica count into [minReplicas, maxReplicas] before reading metrics.
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/x:1",
        "--replicas=1",
    )
    cluster.kubectl(
        "-n", namespace, "autoscale", "deployment", "web", "--min=3", "--max=5", "--cpu=80%"
    )
    wait_until(
        lambda: (
            cluster.get_json("-n", namespace, "get", "deployment", "web")["spec"]["replicas"] == 3
        ),
        timeout=90,
        what="the HPA to scale web to minReplicas=3",
    )
