"""Golden-file tests of every render function, plus the numbers a user cares about."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lamina_operator.identity import Owner
from lamina_operator.render import (
    DEFAULT_IMAGES,
    ServerImages,
    autoscaling_problem,
    cpu_threads,
    pods_query,
    quantity_number,
    render_children,
    render_deployment,
    render_hpa,
    render_pdb,
    render_service,
    server_args,
)
from lamina_operator.spec import LLMDeploymentSpec, PrometheusSource

GOLDEN = Path(__file__).parent / "golden"
OWNER = Owner(name="llama", namespace="ml", uid="0c5e6a1e-0000-4000-8000-000000000001")

SPECS: dict[str, dict[str, Any]] = {
    "minimal": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
    "tp4-autoscaled": {
        "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "bfloat16"},
        "engine": {"tensorParallelSize": 4, "maxNumBatchedTokens": 8192},
        "hiddenStates": {"defaultLayers": [-2, 40], "defaultPooling": "mean"},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 6,
            "targetInFlightRequests": "16",
            "targetQueueDepth": "500m",
            "targetCPUUtilizationPercentage": 80,
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 30, "maxPodsPerMinute": 2}},
            "prometheus": {
                "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
                "authenticationRef": "prometheus-token",
            },
        },
        "secrets": {
            "hfToken": {"name": "hf", "key": "token"},
            "apiKey": {"name": "lamina-key", "key": "key"},
        },
        "scheduling": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "priorityClassName": "inference",
            "runtimeClassName": "nvidia",
        },
        "modelCache": {"persistentVolumeClaim": "model-cache"},
        "probes": {"startupTimeoutSeconds": 3600, "periodSeconds": 15},
        "service": {"annotations": {"example.com/team": "research"}},
        # Prices change no child: only a budget hold does (below).
        "cost": {"pricePerHour": 2.5, "monthlyBudget": 5000, "suspendOverBudget": True},
    },
    "hpa-autoscaled": {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "autoscaling": {"enabled": True, "autoscaler": "HPA", "maxReplicas": 3},
    },
    "cpu-pipeline-off": {
        "model": {"name": "/models/tiny", "dtype": "float32", "maxModelLen": 512},
        "resources": {"useGPU": False, "requests": {"cpu": 2, "memory": "4Gi"}},
        "engine": {"enablePrefixCaching": False, "extraArgs": ["--seed=1"]},
        "replicas": 3,
        "disruptionBudget": {"minAvailable": 2},
        "suspend": True,
    },
}


def _spec(name: str) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate(SPECS[name])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_children_match_golden_files(name: str) -> None:
    rendered = yaml.safe_dump_all(
        list(render_children(OWNER, _spec(name)).values()), sort_keys=False
    )
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("LAMINA_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text(), "re-run with LAMINA_UPDATE_GOLDEN=1 to accept"


def test_a_budget_hold_renders_zero_pods_and_changes_nothing_else() -> None:
    spec = _spec("tp4-autoscaled")
    free, held = render_children(OWNER, spec), render_children(OWNER, spec, budget_hold=True)
    assert held["Deployment"]["spec"]["replicas"] == 0
    held["Deployment"]["spec"]["replicas"] = free["Deployment"]["spec"]["replicas"]
    assert held == free
    assert spec.replicas == 1  # the spec (and the HPA's scale subresource) is left alone


_RENDER_IN_A_PROCESS = """
import json, sys, yaml
from lamina_operator.identity import Owner
from lamina_operator.render import render_children
from lamina_operator.spec import LLMDeploymentSpec
owner, specs = json.load(sys.stdin)
for spec in specs:
    children = render_children(Owner(**owner), LLMDeploymentSpec.model_validate(spec))
    sys.stdout.write(yaml.safe_dump_all(list(children.values()), sort_keys=False))
"""


def test_rendering_is_deterministic_across_processes() -> None:
    """The same bytes whatever the process's hash seed (set and dict order, ids): what
    makes an operator restart or a second replica re-apply every child."""
    owner = {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid}
    given = json.dumps([owner, [SPECS[name] for name in sorted(SPECS)]])

    def render(hash_seed: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", _RENDER_IN_A_PROCESS],
            input=given,
            capture_output=True,
            text=True,
            check=True,
            env={
                **os.environ,
                "PYTHONHASHSEED": hash_seed,
                "PYTHONPATH": os.pathsep.join(sys.path),
            },
        ).stdout

    first = render("1")
    assert first.count("kind: Deployment") == len(SPECS)
    assert render("2") == first
    assert render("random") == first


def test_gpu_count_follows_tensor_and_pipeline_parallel_sizes() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "engine": {"tensorParallelSize": 4, "pipelineParallelSize": 2}}
    )
    resources = _container(spec)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "8"
    assert resources["requests"]["nvidia.com/gpu"] == "8"


def test_cpu_only_requests_no_gpu() -> None:
    assert "nvidia.com/gpu" not in str(_container(_spec("cpu-pipeline-off"))["resources"])


def test_shm_grows_with_tensor_parallel_size() -> None:
    def shm(tp: int) -> str:
        spec = LLMDeploymentSpec.model_validate(
            {"model": {"name": "m"}, "engine": {"tensorParallelSize": tp}}
        )
        volumes = render_deployment(OWNER, spec)["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if v["name"] == "shm"]
        assert volume["emptyDir"]["medium"] == "Memory"
        return str(volume["emptyDir"]["sizeLimit"])

    assert (shm(1), shm(4), shm(8)) == ("2Gi", "8Gi", "16Gi")


def test_startup_probe_covers_the_model_load_budget() -> None:
    probe = _container(_spec("tp4-autoscaled"))["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 3600
    assert probe["httpGet"]["path"] == "/readyz"
    assert _container(_spec("minimal"))["startupProbe"]["failureThreshold"] == 180


def test_secrets_are_references_only() -> None:
    env = {e["name"]: e for e in _container(_spec("tp4-autoscaled"))["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["LAMINA_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lamina-key"


def test_negative_layers_are_not_mistaken_for_flags() -> None:
    args = server_args(_spec("tp4-autoscaled"))
    assert "--default-layers=-2,40" in args
    assert "--default-pooling=mean" in args


def test_suspend_scales_to_zero_and_keeps_other_children() -> None:
    children = render_children(OWNER, _spec("cpu-pipeline-off"))
    assert children["Deployment"]["spec"]["replicas"] == 0
    assert set(children) == {"Deployment", "Service", "PodDisruptionBudget"}


def test_hpa_scales_the_llmdeployment_not_the_deployment() -> None:
    hpa = render_hpa(OWNER, _spec("tp4-autoscaled"))
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LLMDeployment"
    pods_metric = hpa["spec"]["metrics"][0]["pods"]
    assert pods_metric["metric"]["name"] == "lamina_requests_in_flight"
    assert pods_metric["target"]["averageValue"] == "16"


def test_pdb_only_when_more_than_one_pod_can_exist() -> None:
    assert "PodDisruptionBudget" not in render_children(OWNER, _spec("minimal"))
    assert render_pdb(OWNER, _spec("cpu-pipeline-off"))["spec"]["minAvailable"] == 2


def test_every_child_is_owned_and_labelled() -> None:
    spec = _spec("tp4-autoscaled")
    for child in (render_deployment, render_service, render_hpa, render_pdb):
        meta = child(OWNER, spec)["metadata"]
        (ref,) = meta["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("LLMDeployment", OWNER.uid, True)
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lamina-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "llama"


def _container(spec: LLMDeploymentSpec, images: ServerImages = DEFAULT_IMAGES) -> dict[str, Any]:
    pod = render_deployment(OWNER, spec, images)["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def test_cpu_pods_run_the_cpu_image_without_gpu_flags() -> None:
    cpu = LLMDeploymentSpec.model_validate(
        {
            "model": {"name": "/cache/models/tiny"},
            "resources": {"useGPU": False, "limits": {"cpu": "1500m", "memory": "4Gi"}},
        }
    )
    container = _container(cpu, ServerImages(gpu="reg/s:1", cpu="reg/s:1-cpu"))
    assert container["image"] == "reg/s:1-cpu"
    # vLLM-cpu would read this as a fraction of the node's RAM.
    assert not any(a.startswith("--gpu-memory-utilization") for a in container["args"])
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in container["env"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "tolerations" not in render_deployment(OWNER, cpu)["spec"]["template"]["spec"]
    # The user's own image wins over the operator's default.
    own = cpu.model_copy(update={"image": "mine/server:2"})
    assert _container(own)["image"] == "mine/server:2"


def test_gpu_pods_run_the_gpu_image_and_tolerate_the_gpu_taint() -> None:
    gpu = _spec("minimal")
    container = _container(gpu, ServerImages(gpu="reg/s:1", cpu="reg/s:1-cpu"))
    assert container["image"] == "reg/s:1"
    assert "--gpu-memory-utilization=0.9" in container["args"]
    assert not any(e["name"] == "OMP_NUM_THREADS" for e in container["env"])
    pod = render_deployment(OWNER, gpu)["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


@pytest.mark.parametrize(
    ("quantity", "threads"), [("1", 1), (2, 2), ("1500m", 2), ("250m", 1), ("7.5", 8), (None, None)]
)
def test_cpu_threads_round_the_limit_up(quantity: int | str | None, threads: int | None) -> None:
    assert cpu_threads(quantity) == threads


def _autoscaled(**auto: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "autoscaling": {"enabled": True, **auto}}
    )


def test_keda_reads_the_operators_prometheus_unless_the_spec_names_one() -> None:
    defaults = PrometheusSource(server_address="http://prom:9090", authentication_ref="auth")
    scaled = render_children(OWNER, _autoscaled(), prometheus=defaults)["ScaledObject"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["metadata"]["serverAddress"] == "http://prom:9090"
    assert trigger["authenticationRef"] == {"name": "auth"}
    own = _autoscaled(prometheus={"serverAddress": "http://mine:9090"})
    trigger = render_children(OWNER, own, prometheus=defaults)["ScaledObject"]["spec"]["triggers"][
        0
    ]
    assert trigger["metadata"]["serverAddress"] == "http://mine:9090"


def test_keda_without_any_prometheus_renders_no_scaled_object_and_says_what_to_set() -> None:
    spec = _autoscaled()
    assert "ScaledObject" not in render_children(OWNER, spec)
    problem = autoscaling_problem(spec, PrometheusSource())
    assert problem is not None
    assert "spec.autoscaling.prometheus.serverAddress" in problem


def test_scale_to_zero_keeps_one_pod_while_a_job_holds_the_deployment() -> None:
    defaults = PrometheusSource(server_address="http://prom:9090")
    spec = _autoscaled(minReplicas=0, scaleToZeroAfterSeconds=120)
    idle = render_children(OWNER, spec, prometheus=defaults)["ScaledObject"]["spec"]
    held = render_children(OWNER, spec, prometheus=defaults, held=True)["ScaledObject"]["spec"]
    assert (idle["minReplicaCount"], held["minReplicaCount"]) == (0, 1)
    assert idle["cooldownPeriod"] == 120
    assert "HorizontalPodAutoscaler" not in render_children(OWNER, spec, prometheus=defaults)


def test_the_query_counts_only_this_deployments_pods_and_is_zero_without_pods() -> None:
    assert pods_query(OWNER, "lamina_requests_in_flight") == (
        'sum(lamina_requests_in_flight{namespace="ml",pod=~"llama-[a-z0-9]+-[a-z0-9]+"})'
        " or vector(0)"
    )


@pytest.mark.parametrize(
    ("quantity", "number"), [("8", "8"), ("500m", "0.5"), ("1.5", "1.5"), ("2k", "2000")]
)
def test_quantities_become_keda_thresholds(quantity: str, number: str) -> None:
    assert quantity_number(quantity) == number
