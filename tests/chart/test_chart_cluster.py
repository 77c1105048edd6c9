"""The chart against the real local control plane: install under PodSecurity
`restricted`, upgrade, uninstall, what its ServiceAccount may do, examples through
admission, and the operator reconciling with the chart's credentials (not admin).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from chart.chart_helpers import CHART, Release, operator_kubeconfig, pods_ready, restrict
from kube_cluster import REPO, Cluster, wait_until
from operator_harness import start_operator

pytestmark = pytest.mark.cluster

OPERATOR_PODS = "app.kubernetes.io/name=lamina,app.kubernetes.io/instance=lamina"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_install_under_restricted_pod_security_runs_the_operator(
    chart_release: Release,
) -> None:
    cluster, ns = chart_release.cluster, chart_release.namespace
    labels = cluster.get_json("get", "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    wait_until(
        lambda: pods_ready(cluster, ns, OPERATOR_PODS, 1), timeout=60, what="operator pod Ready"
    )
    notes = cluster.helm("get", "notes", "lamina", "-n", ns).stdout
    assert "kubectl" in notes
    assert "apply -f examples/tiny-cpu.yaml" in notes
    assert "never upgrades" in notes


def test_upgrade_changes_the_operator_and_uninstall_removes_everything(
    chart_release: Release,
) -> None:
    cluster, ns = chart_release.cluster, chart_release.namespace
    chart_release.install("--set", "logFormat=plain", "--set", "verbose=true", command="upgrade")
    deployment = cluster.get_json("-n", ns, "get", "deployment", "lamina")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-format=plain" in args
    assert "--verbose" in args
    history = json.loads(cluster.helm("history", "lamina", "-n", ns, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]
    wait_until(
        lambda: pods_ready(cluster, ns, OPERATOR_PODS, 1), timeout=60, what="upgraded pod Ready"
    )

    cluster.helm("uninstall", "lamina", "-n", ns, "--wait", "--timeout", "2m")
    left = cluster.kubectl(
        "-n", ns, "get", "deployment,serviceaccount,role,rolebinding,service",
        "-l", "app.kubernetes.io/instance=lamina", "-o", "name",
    ).stdout  # fmt: skip
    assert left.strip() == ""
    cluster_roles = cluster.kubectl("get", "clusterrole", "-o", "name").stdout
    assert f"lamina-{ns}-discovery" not in cluster_roles
    # Helm keeps CRDs: LLMDeployments elsewhere survive an uninstall.
    cluster.kubectl("get", "crd", "llmdeployments.lamina.dev")


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("watch", "secrets", False),
        ("patch", "llmdeployments.lamina.dev/status", True),
        ("watch", "llmdeployments.lamina.dev", True),
        ("patch", "llmdeployments.lamina.dev", True),
        ("delete", "llmdeployments.lamina.dev", False),
        ("create", "deployments.apps", True),
        ("patch", "services", True),
        ("delete", "horizontalpodautoscalers.autoscaling", True),
        ("create", "poddisruptionbudgets.policy", True),
        ("create", "events", True),
        ("create", "pods", False),
        ("create", "configmaps", False),
        ("create", "rolebindings.rbac.authorization.k8s.io", False),
    ],
)
def test_service_account_has_least_privilege_in_its_namespace(
    chart_release: Release, verb: str, resource: str, allowed: bool
) -> None:
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    assert chart_release.can_i(verb, resource, "-n", chart_release.namespace, *extra) is allowed


def test_namespaced_mode_cannot_touch_other_namespaces(
    chart_release: Release, cluster: Cluster, namespace: str
) -> None:
    other = "default"
    assert not chart_release.can_i("create", "deployments.apps", "-n", other)
    assert not chart_release.can_i("list", "llmdeployments.lamina.dev", "-n", other)
    assert not chart_release.can_i("patch", "llmdeployments.lamina.dev", "-n", other)
    assert not chart_release.can_i("list", "llmdeployments.lamina.dev", "--all-namespaces")
    assert not chart_release.can_i("create", "events", "-n", other)
    # Cluster-wide it only discovers (read-only) CRDs and namespaces.
    assert chart_release.can_i("watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not chart_release.can_i("delete", "namespaces")


def test_cluster_wide_mode_reaches_every_namespace(cluster: Cluster, namespace: str) -> None:
    restrict(cluster, namespace)
    release = Release(cluster, namespace)
    release.install("--set", "clusterWide=true")
    try:
        assert release.can_i("create", "deployments.apps", "-n", "default")
        assert release.can_i("list", "llmdeployments.lamina.dev", "--all-namespaces")
        assert not release.can_i("get", "secrets", "-n", "default")
        assert not release.can_i("get", "secrets", "-n", namespace)
        deployment = cluster.get_json("-n", namespace, "get", "deployment", "lamina")
        assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    finally:
        cluster.helm("uninstall", "lamina", "-n", namespace, check=False)


def test_two_peered_replicas_share_a_kopf_peering(cluster: Cluster, namespace: str) -> None:
    restrict(cluster, namespace)
    release = Release(cluster, namespace)
    release.install("--set", "replicaCount=2", "--set", "peering.enabled=true")
    try:
        cluster.kubectl("-n", namespace, "get", "kopfpeering", "lamina")
        assert release.can_i("patch", "kopfpeerings.kopf.dev", "-n", namespace)
        wait_until(
            lambda: pods_ready(cluster, namespace, OPERATOR_PODS, 2),
            timeout=60,
            what="2 operator pods Ready",
        )
    finally:
        cluster.helm("uninstall", "lamina", "-n", namespace, check=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_passes_admission(chart_release: Release, example: Path) -> None:
    proc = chart_release.cluster.kubectl(
        "-n", chart_release.namespace, "apply", "--dry-run=server", "-f", str(example)
    )
    assert "created (server dry run)" in proc.stdout


def test_operator_with_the_chart_service_account_reconciles_to_ready(
    chart_release: Release, tmp_path: Path
) -> None:
    cluster, ns = chart_release.cluster, chart_release.namespace
    kubeconfig = operator_kubeconfig(chart_release, tmp_path / "operator.kubeconfig")
    env = {**cluster.env, "KUBECONFIG": str(kubeconfig)}
    # The credentials really are the ServiceAccount's, not the admin's.
    who = cluster.run("kubectl", "auth", "whoami", "-o", "json", check=True)
    as_operator = json.loads(
        cluster.run("kubectl", f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json").stdout
    )
    assert as_operator["status"]["userInfo"]["username"] == chart_release.user
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] != chart_release.user

    operator = start_operator(ns, env, tmp_path / "operator.log")
    try:
        # On a kwok node, where kwok plays the pod: this test is about the chart's
        # credentials (tests/e2e runs the example's pods for real).
        example = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
        example["spec"]["scheduling"] = {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(example))
        proc = cluster.kubectl(
            "-n", ns, "wait", "--for=condition=Ready", "llmd/tiny-cpu", "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
        assert proc.returncode == 0, f"{proc.stderr}\noperator log:\n{operator.log.read_text()}"
        status = cluster.get_json("-n", ns, "get", "llmd", "tiny-cpu")["status"]
        assert status["readyReplicas"] == 1
        cluster.kubectl("-n", ns, "get", "deployment/tiny-cpu", "service/tiny-cpu")
        assert "Forbidden" not in operator.log.read_text()
        # Deleting works too: the operator (with its RBAC) releases its finalizer.
        cluster.kubectl("-n", ns, "delete", "llmd", "tiny-cpu", "--timeout=60s")
    finally:
        operator.stop()


def test_chart_crds_are_the_ones_installed(chart_release: Release) -> None:
    crd = chart_release.cluster.get_json("get", "crd", "llmdeployments.lamina.dev")
    assert crd["spec"]["names"]["shortNames"] == ["llmd"]
    assert (CHART / "crds" / "kopf.dev_peerings.yaml").exists()
    chart_release.cluster.kubectl("get", "crd", "kopfpeerings.kopf.dev")
