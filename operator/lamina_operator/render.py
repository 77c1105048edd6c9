"""Pure render functions: an LLMDeployment's spec in, its children's manifests out.

No I/O, no clock, no randomness: the same input always renders the same bytes, which
golden-file tests pin down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lamina_operator.identity import (
    Manifest,
    Owner,
    selector_labels,
    standard_labels,
)
from lamina_operator.spec import (
    API_GROUP,
    API_VERSION,
    DEFAULT_CPU_IMAGE,
    DEFAULT_IMAGE,
    KIND,
    Autoscaler,
    LLMDeploymentSpec,
    PrometheusSource,
)

SERVER_PORT = 8000
CACHE_DIR = "/cache"
# Seconds the pod keeps serving after it is told to stop, so endpoints controllers and
# load balancers stop sending new requests before the server starts draining.
PRESTOP_SLEEP_SECONDS = 5
IN_FLIGHT_METRIC = "lamina_requests_in_flight"
QUEUE_METRIC = "lamina_queue_depth"
SHM_GIB_PER_TP_RANK = 2
DEFAULT_CACHE_SIZE = "100Gi"


@dataclass(frozen=True)
class ServerImages:
    """The operator's default server images (flags --server-image, --server-image-cpu)."""

    gpu: str = DEFAULT_IMAGE
    cpu: str = DEFAULT_CPU_IMAGE

    def for_spec(self, spec: LLMDeploymentSpec) -> str:
        """The spec's own image, else the GPU or CPU default."""
        if spec.image:
            return spec.image
        return self.gpu if spec.resources.use_gpu else self.cpu


DEFAULT_IMAGES = ServerImages()
NO_PROMETHEUS = PrometheusSource()


def endpoint(owner: Owner, spec: LLMDeploymentSpec) -> str:
    """In-cluster URL of the Service."""
    return f"http://{owner.name}.{owner.namespace}.svc:{spec.service.port}"


def _metadata(owner: Owner, annotations: dict[str, str] | None = None) -> Manifest:
    meta: Manifest = {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": standard_labels(owner),
        "ownerReferences": [
            {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta


def server_args(spec: LLMDeploymentSpec) -> list[str]:
    """Command-line arguments of `python -m lamina_server`, derived from the spec.

    `--flag=value` throughout, so negative layer indices are never read as flags.
    """
    model, engine, hs = spec.model, spec.engine, spec.hidden_states
    args = [
        f"--model={model.name}",
        f"--served-model-name={model.served_name or model.name}",
        "--host=0.0.0.0",
        f"--port={SERVER_PORT}",
        f"--dtype={model.dtype.value}",
        f"--tensor-parallel-size={engine.tensor_parallel_size}",
        f"--pipeline-parallel-size={engine.pipeline_parallel_size}",
    ]
    if spec.resources.use_gpu:
        # On CPU vLLM reads this as a fraction of the node's RAM; the server sizes its
        # KV cache from the pod's memory limit instead (lamina_server.cpu_resources).
        args.append(f"--gpu-memory-utilization={engine.gpu_memory_utilization}")
    args.append(
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    if model.revision:
        args.append(f"--revision={model.revision}")
    if model.quantization:
        args.append(f"--quantization={model.quantization.value}")
    if model.max_model_len:
        args.append(f"--max-model-len={model.max_model_len}")
    if model.trust_remote_code:
        args.append("--trust-remote-code")
    if engine.max_num_seqs:
        args.append(f"--max-num-seqs={engine.max_num_seqs}")
    if engine.max_num_batched_tokens:
        args.append(f"--max-num-batched-tokens={engine.max_num_batched_tokens}")
    args += [
        f"--default-layers={','.join(str(n) for n in hs.default_layers)}",
        f"--default-pooling={hs.default_pooling.value}",
        f"--max-prompts-per-request={hs.limits.max_prompts_per_request}",
        f"--max-tokens-per-request={hs.limits.max_tokens_per_request}",
        f"--max-response-bytes={hs.limits.max_response_bytes}",
        f"--max-queue-length={hs.limits.max_queue_length}",
        f"--max-body-bytes={hs.limits.max_body_bytes}",
        f"--max-json-depth={hs.limits.max_json_depth}",
        f"--max-json-array-items={hs.limits.max_json_array_items}",
        f"--max-json-values={hs.limits.max_json_values}",
        f"--max-prompt-chars={hs.limits.max_prompt_chars}",
        f"--max-chat-items={hs.limits.max_chat_items}",
        f"--max-header-bytes={hs.limits.max_header_bytes}",
        f"--max-requests-per-connection={spec.service.max_requests_per_connection}",
        f"--drain-timeout-seconds={drain_timeout_seconds(spec)}",
    ]
    if hs.allowed_layers:
        args.append(f"--allowed-layers={','.join(str(n) for n in hs.allowed_layers)}")
    return args + list(engine.extra_args)


def drain_timeout_seconds(spec: LLMDeploymentSpec) -> int:
    """What is left of the grace period after preStop, minus a margin to exit cleanly."""
    grace = spec.rollout.termination_grace_period_seconds
    return max(1, grace - PRESTOP_SLEEP_SECONDS - 2)


def shm_size(spec: LLMDeploymentSpec) -> str:
    """/dev/shm for NCCL and vLLM's worker processes: grows with tensor-parallel ranks."""
    return f"{SHM_GIB_PER_TP_RANK * spec.engine.tensor_parallel_size}Gi"


def startup_failure_threshold(spec: LLMDeploymentSpec) -> int:
    """Probes the startup budget allows: model download and load must fit in it."""
    return math.ceil(spec.probes.startup_timeout_seconds / spec.probes.period_seconds)


def cpu_threads(cpu: int | str | None) -> int | None:
    """Whole CPUs of a Kubernetes CPU quantity, rounded up (``"7500m"`` -> 8)."""
    if cpu is None:
        return None
    text = str(cpu)
    value = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(value))


def _env(spec: LLMDeploymentSpec) -> list[Manifest]:
    plain = {
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "HOME": "/tmp",
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm",
        "XDG_CACHE_HOME": CACHE_DIR,
    }
    threads = cpu_threads(spec.resources.limits.cpu)
    if not spec.resources.use_gpu and threads is not None:
        # OpenMP/torch threads match the CPU limit; the server also binds vLLM's worker
        # to that many CPUs (a quota does not shrink the affinity mask).
        plain["OMP_NUM_THREADS"] = str(threads)
    env: list[Manifest] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    secret_env = {"HF_TOKEN": spec.secrets.hf_token, "LAMINA_API_KEY": spec.secrets.api_key}
    for name, ref in sorted(secret_env.items()):
        if ref is not None:
            env.append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    return env


def _resources(spec: LLMDeploymentSpec) -> Manifest:
    res = spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for target, source in ((requests, res.requests), (limits, res.limits)):
        if source.cpu is not None:
            target["cpu"] = str(source.cpu)
        if source.memory is not None:
            target["memory"] = source.memory
    if spec.gpus_per_pod:
        # Extended resources must be requested in limits; requests must equal them.
        requests[res.gpu_resource_name] = limits[res.gpu_resource_name] = str(spec.gpus_per_pod)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _http_probe(path: str, period: int, failures: int, timeout: int = 5) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _volumes(spec: LLMDeploymentSpec) -> list[Manifest]:
    cache = spec.model_cache
    cache_volume: Manifest
    if cache.persistent_volume_claim:
        cache_volume = {"persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}}
    else:
        cache_volume = {"emptyDir": {"sizeLimit": cache.empty_dir_size_limit or DEFAULT_CACHE_SIZE}}
    return [
        {"name": "model-cache", **cache_volume},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(spec)}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _pod_spec(spec: LLMDeploymentSpec, images: ServerImages) -> Manifest:
    period = spec.probes.period_seconds
    container: Manifest = {
        "name": "server",
        "image": images.for_spec(spec),
        "imagePullPolicy": spec.image_pull_policy.value,
        "args": server_args(spec),
        "env": _env(spec),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "resources": _resources(spec),
        # Startup: model download + load; readiness: loaded, warm and not draining;
        # liveness: the engine is alive (checked only once started).
        "startupProbe": _http_probe("/readyz", period, startup_failure_threshold(spec)),
        "readinessProbe": _http_probe("/readyz", 5, 1),
        "livenessProbe": _http_probe("/healthz", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        # The server writes why it could not start (e.g. a memory limit too small for
        # the model) to /dev/termination-log; the log's tail otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            # vLLM, torch and triton write caches in places we do not all control.
            "readOnlyRootFilesystem": False,
        },
        "volumeMounts": [
            {"name": "model-cache", "mountPath": CACHE_DIR},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    sched = spec.scheduling
    pod: Manifest = {
        "containers": [container],
        "terminationGracePeriodSeconds": spec.rollout.termination_grace_period_seconds,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": _volumes(spec),
    }
    if sched.node_selector:
        pod["nodeSelector"] = dict(sorted(sched.node_selector.items()))
    tolerations = [*gpu_tolerations(spec), *sched.tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    if sched.affinity:
        pod["affinity"] = sched.affinity
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    if sched.runtime_class_name:
        pod["runtimeClassName"] = sched.runtime_class_name
    return pod


def gpu_tolerations(spec: LLMDeploymentSpec) -> list[Manifest]:
    """GPU node pools are usually tainted with their resource name (GKE does it itself);
    pods that request GPUs tolerate that, as the ExtendedResourceToleration admission
    plugin would add where it is enabled."""
    if not spec.gpus_per_pod:
        return []
    key = spec.resources.gpu_resource_name
    return [{"key": key, "operator": "Exists", "effect": "NoSchedule"}]


def desired_replicas(spec: LLMDeploymentSpec, budget_hold: bool = False) -> int:
    """Pods the Deployment should run. With autoscaling on the HPA writes spec.replicas
    through the LLMDeployment's scale subresource, so this is still the one source.
    A budget hold (spec.cost.suspendOverBudget, the month's budget spent) gives 0
    without touching spec.replicas or spec.suspend, so lifting it restores them."""
    return 0 if spec.suspend or budget_hold else spec.replicas


def render_deployment(
    owner: Owner,
    spec: LLMDeploymentSpec,
    images: ServerImages = DEFAULT_IMAGES,
    budget_hold: bool = False,
) -> Manifest:
    """The server Deployment."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner),
        "spec": {
            "replicas": desired_replicas(spec, budget_hold),
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "template": {
                "metadata": {
                    "labels": standard_labels(owner),
                    "annotations": {
                        "prometheus.io/path": "/metrics",
                        "prometheus.io/port": str(SERVER_PORT),
                        "prometheus.io/scrape": "true",
                    },
                },
                "spec": _pod_spec(spec, images),
            },
        },
    }


def render_service(owner: Owner, spec: LLMDeploymentSpec) -> Manifest:
    """The Service in front of the server pods, port named `http`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, spec.service.annotations),
        "spec": {
            "type": spec.service.type.value,
            "selector": selector_labels(owner),
            "ports": [
                {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def _scaling_rules(window: int, pods_per_minute: int | None) -> Manifest:
    rules: Manifest = {"stabilizationWindowSeconds": window}
    if pods_per_minute is not None:
        rules["policies"] = [{"type": "Pods", "value": pods_per_minute, "periodSeconds": 60}]
    return rules


def render_hpa(owner: Owner, spec: LLMDeploymentSpec) -> Manifest:
    """The HPA. It scales the LLMDeployment itself (scale subresource), never the
    Deployment, so the operator and the HPA never both write one replica count."""
    auto = spec.autoscaling
    metrics: list[Manifest] = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": IN_FLIGHT_METRIC},
                "target": {"type": "AverageValue", "averageValue": auto.target_in_flight_requests},
            },
        }
    ]
    if auto.target_cpu_utilization_percentage is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": auto.target_cpu_utilization_percentage,
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": owner.name,
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(spec),
        },
    }


def _behavior(spec: LLMDeploymentSpec) -> Manifest:
    up, down = spec.autoscaling.behavior.scale_up, spec.autoscaling.behavior.scale_down
    return {
        "scaleUp": _scaling_rules(up.stabilization_window_seconds, up.max_pods_per_minute),
        "scaleDown": _scaling_rules(down.stabilization_window_seconds, down.max_pods_per_minute),
    }


_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_number(quantity: str) -> str:
    """A Kubernetes quantity as the plain number KEDA's thresholds take ("500m" -> "0.5")."""
    digits = quantity.rstrip("".join(sorted({c for k in _SUFFIXES for c in k})))
    value = float(digits) * _SUFFIXES.get(quantity[len(digits) :], 1.0)
    return f"{value:g}"


def pods_query(owner: Owner, metric: str) -> str:
    """PromQL: ``metric`` summed over this deployment's server pods (named
    <deployment>-<replicaset hash>-<id>), 0 when none runs (scaled to zero)."""
    pods = f'namespace="{owner.namespace}",pod=~"{owner.name}-[a-z0-9]+-[a-z0-9]+"'
    return f"sum({metric}{{{pods}}}) or vector(0)"


def autoscaling_problem(spec: LLMDeploymentSpec, defaults: PrometheusSource) -> str | None:
    """Why the autoscaler cannot be rendered as asked (a sentence), or None."""
    auto = spec.autoscaling
    if not auto.enabled or auto.autoscaler != Autoscaler.KEDA:
        return None
    if not (auto.prometheus.server_address or defaults.server_address):
        return (
            "autoscaling with KEDA needs a Prometheus address: set "
            "spec.autoscaling.prometheus.serverAddress, or the chart value "
            "autoscaling.prometheus.serverAddress"
        )
    return None


def render_scaled_object(
    owner: Owner, spec: LLMDeploymentSpec, defaults: PrometheusSource, held: bool = False
) -> Manifest:
    """KEDA's ScaledObject. Like the HPA it scales the LLMDeployment (its scale
    subresource); KEDA makes and owns the HPA (keda-hpa-<name>), and can go to zero.
    ``held``: a `lamina run` job or `lamina up` keeps at least one pod, however idle."""
    auto = spec.autoscaling
    address = auto.prometheus.server_address or defaults.server_address
    auth = auto.prometheus.authentication_ref or defaults.authentication_ref

    def on_prometheus(metric: str, target: str) -> Manifest:
        trigger: Manifest = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": address,
                "query": pods_query(owner, metric),
                "threshold": quantity_number(target),
            },
        }
        if auth:
            trigger["authenticationRef"] = {"name": auth}
        return trigger

    triggers = [on_prometheus(IN_FLIGHT_METRIC, auto.target_in_flight_requests)]
    if auto.target_queue_depth is not None:
        triggers.append(on_prometheus(QUEUE_METRIC, auto.target_queue_depth))
    if auto.target_cpu_utilization_percentage is not None:
        triggers.append(
            {
                "type": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": str(auto.target_cpu_utilization_percentage)},
            }
        )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": owner.name,
            },
            "minReplicaCount": max(auto.min_replicas, 1) if held else auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "pollingInterval": auto.polling_interval_seconds,
            "cooldownPeriod": auto.scale_to_zero_after_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": triggers,
        },
    }


def wants_pdb(spec: LLMDeploymentSpec) -> bool:
    """A PodDisruptionBudget only makes sense when more than one pod can exist."""
    most = spec.autoscaling.max_replicas if spec.autoscaling.enabled else spec.replicas
    return spec.disruption_budget.enabled and most > 1


def render_pdb(owner: Owner, spec: LLMDeploymentSpec) -> Manifest:
    """The PodDisruptionBudget: by default at most one pod down at a time."""
    budget = spec.disruption_budget
    limit: Manifest
    if budget.min_available is not None:
        limit = {"minAvailable": budget.min_available}
    else:
        limit = {"maxUnavailable": 1 if budget.max_unavailable is None else budget.max_unavailable}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner),
        "spec": {"selector": {"matchLabels": selector_labels(owner)}, **limit},
    }


def render_children(
    owner: Owner,
    spec: LLMDeploymentSpec,
    images: ServerImages = DEFAULT_IMAGES,
    prometheus: PrometheusSource = NO_PROMETHEUS,
    held: bool = False,
    budget_hold: bool = False,
) -> dict[str, Manifest]:
    """Every child the spec wants, by kind. Kinds missing here are to be pruned.
    ``prometheus``: the operator's defaults for KEDA; ``held``: jobs hold a pod up;
    ``budget_hold``: the budget holds the pods at zero."""
    children = {
        "Deployment": render_deployment(owner, spec, images, budget_hold),
        "Service": render_service(owner, spec),
    }
    if spec.autoscaling.enabled and spec.autoscaling.autoscaler == Autoscaler.HPA:
        children["HorizontalPodAutoscaler"] = render_hpa(owner, spec)
    elif spec.autoscaling.enabled and autoscaling_problem(spec, prometheus) is None:
        children["ScaledObject"] = render_scaled_object(owner, spec, prometheus, held)
    if wants_pdb(spec):
        children["PodDisruptionBudget"] = render_pdb(owner, spec)
    return children
