"""The local cluster's real node (hack/node.sh): a kubelet on containerd that runs real
containers, beside kwok's fake GPU nodes, and that leaves nothing behind when stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

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


def _oci_archive(path: Path, ref: str, label: str) -> str:
    """A one-layer image named ``ref`` as an OCI archive; returns its config digest."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer = blob(bytes(1024))  # an empty tar
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"lamina.test": label}},
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode()
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
            }
        ).encode()
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"io.containerd.image.name": ref},
            }
        ],
    }
    files: dict[str, str | bytes] = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps(index),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in [
            *files.items(),
            *((f"blobs/sha256/{d[7:]}", b) for d, b in blobs.items()),
        ]:
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return str(config["digest"])


def _image_refs() -> set[str]:
    listing = subprocess.run(
        [str(NODE_SH), "ctr", "images", "ls", "-q"], capture_output=True, text=True, check=True
    )
    return set(listing.stdout.split())


def test_an_image_replaced_by_a_newer_import_leaves_the_disk(
    cluster: Cluster, tmp_path: Path
) -> None:
    # containerd's CRI plugin names each image also by its id; before `images.sh load`
    # pruned those, every rebuilt server image (GBs) stayed, until disk pressure.
    ref = "lamina.test/replaced:1"
    ids = []
    for label in ("old", "new"):
        archive = tmp_path / f"{label}.tar"
        ids.append(_oci_archive(archive, ref, label))
        subprocess.run([str(NODE_SH), "ctr", "images", "import", str(archive)], check=True)
    old, new = ids
    try:
        wait_until(lambda: {old, new} <= _image_refs(), timeout=30, what="CRI's id refs")
        prune = subprocess.run(
            [str(REPO / "hack" / "images.sh"), "prune"], capture_output=True, text=True
        )
        assert prune.returncode == 0, prune.stderr
        refs = _image_refs()
        assert old not in refs, "the replaced image is still on the node"
        assert {ref, new} <= refs, "the current image and its id stay"
    finally:
        for name in (ref, old, new):
            subprocess.run([str(NODE_SH), "ctr", "images", "rm", name], capture_output=True)
