"""Operator at scale: N LLMDeployments applied at once on the local cluster.

    python bench/operator/bench_operator.py [--count 200] [--idle-seconds 60]

Measures seconds until all are Ready, the operator's API requests per reconcile, its
peak RSS and its API writes while idle. The baseline, run in the same script on the
same cluster, is N plain Deployments of the same pods applied with kubectl (no
operator): the ratio is what the operator adds on top of Kubernetes itself.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import kube_cluster  # noqa: E402
from operator_harness import OperatorProcess, apply_crd, start_operator  # noqa: E402

POD_LABELS = {"app.kubernetes.io/name": "bench"}
# The pods of both sides are simulated by kwok on its (tainted) GPU nodes: this
# benchmark measures the operator, not a node.
ON_KWOK = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def llmdeployment(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": f"m{i:04d}"},
        "spec": {
            "model": {"name": "/models/tiny"},
            "resources": {"useGPU": False},
            "scheduling": ON_KWOK,
        },
    }


def plain_deployment(i: int) -> dict[str, Any]:
    labels = {**POD_LABELS, "app.kubernetes.io/instance": f"d{i:04d}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"d{i:04d}", "labels": POD_LABELS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "server", "image": "bench"}], **ON_KWOK},
            },
        },
    }


def count_ready(cluster: kube_cluster.Cluster, namespace: str, kind: str) -> int:
    items = cluster.get_json("-n", namespace, "get", kind)["items"]
    if kind == "llmd":
        return sum(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in i.get("status", {}).get("conditions", [])
            )
            for i in items
        )
    return sum(i.get("status", {}).get("readyReplicas", 0) >= 1 for i in items)


def apply_and_time(
    cluster: kube_cluster.Cluster, namespace: str, docs: list[dict[str, Any]], kind: str
) -> float:
    started = time.monotonic()
    cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=600
    )
    kube_cluster.wait_until(
        lambda: count_ready(cluster, namespace, kind) == len(docs),
        timeout=900,
        interval=1.0,
        what=f"{len(docs)} {kind} Ready",
    )
    return time.monotonic() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def writes(operator: OperatorProcess) -> float:
    return sum(
        operator.metric("lamina_operator_api_requests_total", verb=v)
        for v in ("PATCH", "POST", "PUT", "DELETE")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()

    cluster = kube_cluster.up()
    apply_crd(cluster)
    suffix = secrets.token_hex(3)
    base_ns, op_ns = f"bench-base-{suffix}", f"bench-op-{suffix}"
    for ns in (base_ns, op_ns):
        cluster.kubectl("create", "namespace", ns)

    operator: OperatorProcess | None = None
    try:
        baseline = apply_and_time(
            cluster, base_ns, [plain_deployment(i) for i in range(args.count)], "deploy"
        )

        log = Path(f"/tmp/lamina-bench-operator-{suffix}.log")
        operator = start_operator(op_ns, cluster.env, log)
        with_operator = apply_and_time(
            cluster, op_ns, [llmdeployment(i) for i in range(args.count)], "llmd"
        )

        requests = operator.metric("lamina_operator_api_requests_total")
        reconciles = operator.metric("lamina_operator_reconcile_duration_seconds_count")
        idle_before = writes(operator)
        time.sleep(args.idle_seconds)  # a measurement window, not synchronisation
        idle_writes = writes(operator) - idle_before
        rss = peak_rss_mib(operator.process.pid)
    finally:
        if operator is not None:
            cluster.kubectl(
                "-n", op_ns, "delete", "llmd", "--all", "--timeout=300s", check=False, timeout=360
            )
            operator.stop()
        for ns in (base_ns, op_ns):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)

    rows = [
        (
            "all Ready, s",
            f"{baseline:.1f}",
            f"{with_operator:.1f}",
            f"{with_operator / baseline:.2f}x",
        ),
        ("reconciles", "-", f"{reconciles:.0f}", f"{reconciles / args.count:.1f} per object"),
        ("API requests / reconcile", "-", f"{requests / max(reconciles, 1):.2f}", ""),
        ("operator peak RSS, MiB", "-", f"{rss:.0f}", ""),
        (f"API writes idle {args.idle_seconds:.0f}s", "-", f"{idle_writes:.0f}", "goal: 0"),
    ]
    print(f"\n{args.count} objects applied at once (baseline: plain Deployments, no operator)")
    print(f"| {'metric':<26} | {'baseline':>9} | {'lamina':>9} | {'ratio / note':<18} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 11}|{'-' * 20}|")
    for name, base, ours, note in rows:
        print(f"| {name:<26} | {base:>9} | {ours:>9} | {note:<18} |")
    print(
        json.dumps(
            {
                "count": args.count,
                "baseline_s": baseline,
                "operator_s": with_operator,
                "requests_per_reconcile": requests / max(reconciles, 1),
                "peak_rss_mib": rss,
                "idle_writes": idle_writes,
            }
        )
    )


if __name__ == "__main__":
    main()
