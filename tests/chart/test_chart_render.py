"""The chart without a cluster: lint, golden renders, values schema, fail-early checks.

Golden files (tests/chart/golden/<scenario>.yaml) are `helm template` of each
charts/lamina/ci/<scenario>-values.yaml; re-run with LAMINA_UPDATE_GOLDEN=1 to
accept a deliberate change, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.chart_helpers import CHART, RELEASE, Helm, find, manifests
from kube_cluster import REPO
from lamina_operator.__main__ import parse_args
from lamina_operator.__main__ import settings as operator_settings
from lamina_operator.identity import Owner
from lamina_operator.render import render_hpa
from lamina_operator.spec import LLMDeploymentSpec

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
NAMESPACE = "lamina-system"
MONITORING_API = "monitoring.coreos.com/v1"


def template(helm: Helm, *args: str, check: bool = True) -> str:
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=check)
    return proc.stdout if proc.returncode == 0 else proc.stderr


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    return manifests(template(helm, *args))


def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = (CHART / "crds" / "lamina.dev_llmdeployments.yaml").read_bytes()
    assert chart_crd == (REPO / "crds" / "lamina.dev_llmdeployments.yaml").read_bytes(), (
        "copy crds/lamina.dev_llmdeployments.yaml to charts/lamina/crds/"
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_passes(helm: Helm, scenario: str) -> None:
    values = CHART / "ci" / f"{scenario}-values.yaml"
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_render_matches_golden(helm: Helm, scenario: str) -> None:
    values = CHART / "ci" / f"{scenario}-values.yaml"
    rendered = template(helm, "-f", str(values), "--api-versions", MONITORING_API)
    golden = GOLDEN / f"{scenario}.yaml"
    if os.environ.get("LAMINA_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text(), "re-run with LAMINA_UPDATE_GOLDEN=1 to accept"


def test_default_operator_watches_only_the_release_namespace(helm: Helm) -> None:
    objects = render(helm)
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/lamina-dev/lamina-operator:0.1.0"
    assert f"--namespace={NAMESPACE}" in container["args"]
    assert "--all-namespaces" not in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert [r["metadata"]["namespace"] for r in find(objects, "Role")] == [NAMESPACE]
    # The only cluster-wide grant is read-only discovery of CRDs and namespaces.
    (cluster_role,) = find(objects, "ClusterRole")
    verbs = {v for rule in cluster_role["rules"] for v in rule["verbs"]}
    assert verbs == {"list", "watch"}


def test_operator_pod_meets_pod_security_restricted(helm: Helm) -> None:
    (deployment,) = find(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_rule_grants_secrets_or_wildcards(helm: Helm, scenario: str) -> None:
    values = CHART / "ci" / f"{scenario}-values.yaml"
    objects = render(helm, "-f", str(values))
    rules = [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    assert rules
    for rule in rules:
        assert "secrets" not in rule["resources"], rule
        assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"], rule


def test_cluster_wide_mode_uses_one_cluster_role(helm: Helm) -> None:
    objects = render(helm, "--set", "clusterWide=true")
    (deployment,) = find(objects, "Deployment")
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not find(objects, "Role")
    (role,) = find(objects, "ClusterRole")
    resources = {res for rule in role["rules"] for res in rule["resources"]}
    assert {"llmdeployments", "llmdeployments/status", "deployments", "events"} <= resources


def test_several_namespaces_get_a_role_and_peering_each(helm: Helm) -> None:
    values = CHART / "ci" / "ha-multi-namespace-values.yaml"
    objects = render(helm, "-f", str(values))
    namespaces = ["ml-team-a", "ml-team-b"]
    assert [r["metadata"]["namespace"] for r in find(objects, "Role")] == namespaces
    assert [r["metadata"]["namespace"] for r in find(objects, "RoleBinding")] == namespaces
    assert [p["metadata"]["namespace"] for p in find(objects, "KopfPeering")] == namespaces
    (deployment,) = find(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=lamina" in args
    assert [a for a in args if a.startswith("--namespace=")] == [
        f"--namespace={n}" for n in namespaces
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=2"], "needs peering.enabled=true"),
        (["--set", "clusterWide=true", "--set", "watchNamespaces={a}"], "leave watchNamespaces"),
        (["--set", "monitoring.serviceMonitor.enabled=true", "--set", "metrics.enabled=false"],
         "needs metrics.enabled"),
        (["--set", "replicaCount=3", "--set", "peering.enabled=true"], "replicaCount"),
        (["--set", "logFormat=xml"], "logFormat"),
        (["--set", "rbac.secrets=true"], "secrets"),
    ],
    ids=["replicas-without-peering", "cluster-wide-with-namespaces", "monitor-without-metrics",
         "too-many-replicas", "bad-enum", "unknown-key"],
)  # fmt: skip
def test_bad_values_fail_before_anything_is_installed(
    helm: Helm, args: list[str], message: str
) -> None:
    proc = helm("template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr


def test_monitoring_objects_need_the_prometheus_operator_api(helm: Helm) -> None:
    values = str(CHART / "ci" / "cluster-wide-monitoring-values.yaml")
    without = {o["kind"] for o in render(helm, "-f", values)}
    with_api = {o["kind"] for o in render(helm, "-f", values, "--api-versions", MONITORING_API)}
    assert not without & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= with_api
    # Plain ConfigMaps do not depend on the Prometheus Operator.
    assert "ConfigMap" in without


def test_adapter_rule_serves_the_metric_the_operator_hpa_targets(helm: Helm) -> None:
    objects = render(helm, "--set", "monitoring.prometheusAdapter.enabled=true")
    (config_map,) = find(objects, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    fragment = yaml.safe_load(config_map["data"]["values.yaml"])
    assert fragment["rules"]["custom"] == config["rules"]
    (rule,) = config["rules"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}

    spec = LLMDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "autoscaling": {"enabled": True, "autoscaler": "HPA"}}
    )
    hpa = render_hpa(Owner(name="x", namespace="ns", uid="u"), spec)
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m]
    assert pods_metrics == [rule["name"]["as"]]
    assert re.search(rule["name"]["matches"], "lamina_requests_in_flight")
    assert rule["seriesQuery"].startswith("lamina_requests_in_flight{")


def test_dashboard_shows_the_server_metrics(helm: Helm) -> None:
    objects = render(helm, "--set", "monitoring.grafanaDashboard.enabled=true")
    (config_map,) = find(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["lamina.json"])
    queries = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    expected = {
        "Requests / s": "lamina_requests_total",
        "p95 latency": "lamina_request_duration_seconds_bucket",
        "Errors / s (4xx, 5xx)": "lamina_requests_total",
        "Requests in flight (HPA signal)": "lamina_requests_in_flight",
        "Prompt tokens / s": "lamina_prompt_tokens_total",
        "Hidden-state bytes / s": "lamina_hidden_state_bytes_total",
    }
    for title, metric in expected.items():
        assert metric in queries[title], title


def test_alerts_cover_down_latency_errors_and_gpus(helm: Helm) -> None:
    objects = render(
        helm,
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--api-versions",
        MONITORING_API,
    )
    (rule,) = find(objects, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "LaminaServerDown",
        "LaminaLatencyP95High",
        "LaminaErrorRateHigh",
        "LaminaGPUMemoryHigh",
        "LaminaGPUTemperatureHigh",
    }
    assert "0.95" in alerts["LaminaLatencyP95High"]
    assert "DCGM_FI_DEV_GPU_TEMP" in alerts["LaminaGPUTemperatureHigh"]


def _schema_nodes(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, node)]
    for key, child in node.get("properties", {}).items():
        nodes += _schema_nodes(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            nodes += _schema_nodes(node[key], f"{path}[{key}]")
    return nodes


def test_values_schema_describes_every_property_and_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _schema_nodes(schema, "values"):
        if "[" not in path.rsplit(".", 1)[-1]:
            assert node.get("description"), f"{path} has no description"
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        assert node.get("additionalProperties") is not True, path


def _leaf_keys(values: Any, prefix: str = "") -> set[str]:
    if isinstance(values, dict) and values:
        return {k for key, v in values.items() for k in _leaf_keys(v, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


# Free-form values documented as one @param (Kubernetes objects passed through).
_OPAQUE = (
    "resources",
    "podSecurityContext",
    "containerSecurityContext",
    "monitoring.grafanaDashboard.labels",
)


def test_every_value_has_a_param_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) ", text, re.MULTILINE))
    keys = {k for k in _leaf_keys(yaml.safe_load(text)) if not k.startswith(_OPAQUE)}
    keys |= set(_OPAQUE)
    assert keys - documented == set()
    assert documented - keys == set()


def test_the_prometheus_keda_reads_reaches_the_operators_settings(helm: Helm) -> None:
    objects = render(
        helm,
        "--set", "autoscaling.prometheus.serverAddress=http://prom.monitoring.svc:9090",
        "--set", "autoscaling.prometheus.authenticationRef=prom-token",
    )  # fmt: skip
    (deployment,) = find(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = operator_settings(parse_args(args))
    assert settings.prometheus.server_address == "http://prom.monitoring.svc:9090"
    assert settings.prometheus.authentication_ref == "prom-token"
    (default,) = find(render(helm), "Deployment")
    assert not any(
        "prometheus" in a for a in default["spec"]["template"]["spec"]["containers"][0]["args"]
    )
