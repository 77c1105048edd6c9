"""The local cluster's real node (hack/node.sh): a kubelet on containerd that runs real
containers, beside kwok's fake GPU nodes, and that leaves nothing behind when stopped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kube_cluster
import pytest
from e2e.real_node import NODE, NODE_SH, image_ref
from kube_cluster import REPO, Cluster, wait_until

pytestmark = pytest.mark.cluster


def _pinned(var: str) -> str:
    for line in (REPO / "hack" / "tools.env").read_text().splitlines():
        if line.startswith(f"{var}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{var} not pinned")


def test_the_real_node_runs_kubelet_on_containerd_and_kwok_leaves_it_alone(
    cluster: Cluster,
) -> None:
    node = cluster.get_json("get", "node", NODE)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == _pinned("KUBE_VERSION")
    assert info["containerRuntimeVersion"] == f"containerd://{_pinned('CONTAINERD_VERSION')[1:]}"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["reason"] == "KubeletReady", "the kubelet, not kwok, reports this node"
    # The fake GPU nodes keep pods without GPUs off.
    for gpu_node in cluster.get_json("get", "nodes", "-l", "type=kwok")["items"]:
        taints = gpu_node["spec"].get("taints", [])
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints


def _pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {"name": "main", "image": image_ref("pause"), "imagePullPolicy": "Never"}
                ],
                "terminationGracePeriodSeconds": 1,
            },
        }
    )


def _phase(cluster: Cluster, namespace: str, name: str) -> str:
    pod = cluster.get_json("-n", namespace, "get", "pod", name)
    return str(pod["status"].get("phase"))


def test_node_down_leaves_nothing_behind_and_up_brings_its_pods_back(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=_pod("sleeper"))
    wait_until(
        lambda: _phase(cluster, namespace, "sleeper") == "Running",
        timeout=60,
        what="a pod Running on the real node",
    )
    assert cluster.get_json("-n", namespace, "get", "pod", "sleeper")["spec"]["nodeName"] == NODE

    # With a pod running there are mounts, a veth, cgroups and iptables rules to remove.
    down = subprocess.run([str(NODE_SH), "down"], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    left = subprocess.run([str(NODE_SH), "leftovers"], capture_output=True, text=True)
    assert left.stdout == "", f"left behind:\n{left.stdout}"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "lamina0" not in links
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in rules
    assert "CNI-" not in rules
    mounts = Path("/proc/self/mounts").read_text()
    assert "/run/lamina-node" not in mounts
    assert "/kubelet/pods/" not in mounts

    kube_cluster.up(cluster.name)  # starts the node again (the control plane was up)
    wait_until(
        lambda: _phase(cluster, namespace, "sleeper") == "Running",
        timeout=120,
        what="the pod Running again after the node came back",
    )
