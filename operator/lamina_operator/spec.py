"""The typed LLMDeployment API: the one source of truth the CRD schema is generated from.

Field descriptions become `kubectl explain` text. What types cannot say is a `Rule`,
written once: its CEL becomes the CRD's `x-kubernetes-validations`, its Python check
runs when the typed model is built, and both refuse with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "lamina.dev"
API_VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ["llmd"]
CATEGORIES = ["lamina"]
HISTORY_MONTHS = 12  # finished months kept in status.cost.history

# An int (4) or a string ("25%", "500m", "16Gi"), as Kubernetes' IntOrString.
IntOrString = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]


@dataclass(frozen=True)
class Rule:
    """A rule types cannot say, written once: ``cel`` for the API server's admission
    (``x-kubernetes-validations``), ``holds`` for the operator's own parsing, and the
    ``message`` a user sees from either."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


def _cel_rules(schema: dict[str, Any], model: type[Any]) -> None:
    rules: tuple[Rule, ...] = (*getattr(model, "rules", ()), *getattr(model, "name_rules", ()))
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused; a model's
    ``rules`` are checked here and rendered into the CRD."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=_cel_rules,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules_hold(self) -> Self:
        for rule in self.rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Quantization(StrEnum):
    AWQ = "awq"
    GPTQ = "gptq"
    FP8 = "fp8"
    BITSANDBYTES = "bitsandbytes"
    COMPRESSED_TENSORS = "compressed-tensors"


class Pooling(StrEnum):
    LAST = "last"
    MEAN = "mean"
    ALL = "all"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ModelSpec(ApiModel):
    """Which model the servers load and how vLLM reads it."""

    name: str = Field(
        min_length=1,
        max_length=512,
        description="Hugging Face model id (e.g. meta-llama/Llama-3.1-8B-Instruct) or a local "
        "path inside the container (e.g. /models/my-model).",
    )
    revision: str | None = Field(
        default=None, max_length=128, description="Model revision: branch, tag or commit."
    )
    served_name: str | None = Field(
        default=None,
        max_length=256,
        description="Name clients use in the OpenAI `model` field. Defaults to `name`.",
    )
    dtype: Dtype = Field(
        default=Dtype.AUTO,
        description=(
            "Weights and activations data type. `auto` keeps the checkpoint's own dtype "
            "(as transformers loads it; float32 when the checkpoint records none), so hidden "
            "states match transformers'; set `bfloat16` to trade that for speed."
        ),
    )
    quantization: Quantization | None = Field(
        default=None, description="Quantization method of the checkpoint, if any."
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="Context length in tokens. Defaults to the model's own.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the model repository's own Python code to run."
    )
    num_layers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Number of decoder layers, when the operator cannot know it (it knows "
        "common models). Used to reject layer indices beyond the model before any pod starts.",
    )
    hidden_size: int | None = Field(
        default=None, ge=1, description="Hidden size of the model, reported in status."
    )


class EngineSpec(ApiModel):
    """vLLM engine settings."""

    rules = (
        Rule(
            "self.tensorParallelSize * self.pipelineParallelSize <= 64",
            "tensorParallelSize × pipelineParallelSize must be at most 64 GPUs",
            lambda e: e.tensor_parallel_size * e.pipeline_parallel_size <= 64,
        ),
    )

    tensor_parallel_size: int = Field(
        default=1, ge=1, le=64, description="GPUs one model copy is split across (per node)."
    )
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=16, description="Pipeline stages; GPUs per pod = tensor × pipeline."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of each GPU's memory vLLM may use (0 < x ≤ 1).",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse KV cache of shared prompt prefixes."
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=65536, description="Most sequences in one engine step."
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="Most tokens in one engine step (chunked-prefill budget)."
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description="Further vLLM command-line arguments, appended verbatim.",
    )


class HiddenStateLimits(ApiModel):
    """Per-request limits of the server, checked before any work is done: the body,
    JSON and header limits on every route, the others on the hidden-state routes."""

    max_prompts_per_request: int = Field(
        default=64,
        ge=1,
        le=100000,
        description="Most prompts in one request; on completions and chat, most "
        "completions (prompts × n).",
    )
    max_tokens_per_request: int = Field(
        default=16384, ge=1, description="Most prompt tokens in one request, all prompts together."
    )
    max_response_bytes: int = Field(
        default=268435456,
        ge=1024,
        description="Most bytes of hidden states in one answer "
        "(tokens × layers × hidden size × bytes per value).",
    )
    max_queue_length: int = Field(
        default=256, ge=1, description="Requests waiting beyond this get 429 with Retry-After."
    )
    max_body_bytes: int = Field(
        default=8388608,
        ge=1024,
        le=1073741824,
        description="Most bytes in one request body, on every route (413 beyond).",
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=256,
        description="Deepest nesting of a request's JSON (413 beyond). At most 256: "
        "Python's JSON parser recurses once per level.",
    )
    max_json_array_items: int = Field(
        default=32768,
        ge=16,
        le=16777216,
        description="Most items in one JSON array of a request, e.g. the token ids of a "
        "prompt (413 beyond).",
    )
    max_json_values: int = Field(
        default=32768,
        ge=1024,
        le=16777216,
        description="Most JSON values (numbers, strings, arrays, objects, keys) in one "
        "request body (413 beyond). Parsing holds the server's event loop about 1 µs "
        "per value: raise it only with the health probes' timeouts in mind.",
    )
    max_prompt_chars: int = Field(
        default=1000000,
        ge=1,
        le=100000000,
        description="Most characters of text prompts in one request for hidden states "
        "or embeddings, and of prompts and messages for completions, checked before "
        "tokenizing (413 beyond).",
    )
    max_chat_items: int = Field(
        default=256,
        ge=1,
        le=1048576,
        description="Most messages, content parts and tools in one chat request (413 beyond). "
        "vLLM validates each on the server's event loop, up to 80 µs for an odd one: "
        "raise it only with the health probes' timeouts in mind.",
    )
    max_header_bytes: int = Field(
        default=65536,
        ge=4096,
        le=16777216,
        description="Most bytes of a request line and its headers (431 beyond).",
    )


class HiddenStatesSpec(ApiModel):
    """What `/v1/hidden_states` returns by default and what it allows."""

    rules = (
        Rule(
            "!has(self.allowedLayers) || size(self.allowedLayers) == 0 || "
            "self.defaultLayers.all(l, l in self.allowedLayers)",
            "every entry of defaultLayers must also be in allowedLayers",
            lambda h: not h.allowed_layers or set(h.default_layers) <= set(h.allowed_layers),
        ),
    )

    default_layers: list[int] = Field(
        default_factory=lambda: [-2],
        json_schema_extra={"default": [-2]},
        min_length=1,
        max_length=256,
        description="Layers returned when a request names none. Layer i is the residual "
        "stream after decoder layer i; negative indices count from the end (-1 is the last "
        "layer, before the final norm).",
    )
    allowed_layers: list[int] | None = Field(
        default=None,
        max_length=1024,
        description="If set, the only layers requests may ask for. Unset or empty: all.",
    )
    default_pooling: Pooling = Field(
        default=Pooling.LAST,
        description="How token vectors are reduced when a request does not say: the last "
        "token, the mean over tokens, or all tokens.",
    )
    limits: HiddenStateLimits = Field(
        default_factory=HiddenStateLimits,
        description="Per-request limits (body, JSON and headers on every route).",
    )


class ScalingRules(ApiModel):
    """How fast the autoscaler may move in one direction."""

    stabilization_window_seconds: int = Field(
        ge=0,
        le=3600,
        description="The autoscaler acts on the most conservative recommendation of this window.",
    )
    max_pods_per_minute: int | None = Field(
        default=None, ge=1, description="At most this many pods added or removed per minute."
    )


class AutoscalingBehavior(ApiModel):
    """Scale-up and scale-down behaviour of the HorizontalPodAutoscaler."""

    scale_up: ScalingRules = Field(
        default_factory=lambda: ScalingRules(stabilization_window_seconds=0),
        json_schema_extra={"default": {"stabilizationWindowSeconds": 0}},
        description="Scale-up rules. Default: act at once.",
    )
    scale_down: ScalingRules = Field(
        default_factory=lambda: ScalingRules(stabilization_window_seconds=300),
        json_schema_extra={"default": {"stabilizationWindowSeconds": 300}},
        description="Scale-down rules. Default: wait 5 minutes (model loads are expensive).",
    )


class Autoscaler(StrEnum):
    KEDA = "KEDA"
    HPA = "HPA"


class PrometheusSource(ApiModel):
    """Where KEDA reads the servers' metrics."""

    server_address: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^https?://",
        description="Prometheus base URL KEDA queries, e.g. "
        "http://prometheus-operated.monitoring.svc:9090. Default: the operator's "
        "(chart value autoscaling.prometheus.serverAddress).",
    )
    authentication_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A KEDA TriggerAuthentication in this namespace (bearer token, basic "
        "auth or TLS for Prometheus). Default: the operator's (chart value "
        "autoscaling.prometheus.authenticationRef), else none.",
    )


MIN_ZERO_NEEDS_KEDA = (
    "autoscaling.minReplicas 0 (scale to zero) needs autoscaling.autoscaler KEDA: an HPA "
    "cannot scale to zero"
)


class AutoscalingSpec(ApiModel):
    """Scale the servers on their own in-flight requests: through KEDA (a ScaledObject
    reading Prometheus; can scale to zero) or a plain HPA on a Pods metric your own
    adapter serves."""

    rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            "self.minReplicas >= 1 || self.autoscaler == 'KEDA'",
            MIN_ZERO_NEEDS_KEDA,
            lambda a: a.min_replicas >= 1 or a.autoscaler == Autoscaler.KEDA,
        ),
    )

    enabled: bool = Field(default=False, description="Scale the replicas on load.")
    autoscaler: Autoscaler = Field(
        default=Autoscaler.KEDA,
        description="KEDA: a ScaledObject (needs KEDA and a Prometheus that scrapes the "
        "server pods). HPA: a HorizontalPodAutoscaler on the Pods metric "
        "`lamina_requests_in_flight` served by an adapter you run (e.g. prometheus-adapter).",
    )
    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 scales to zero when idle (KEDA)."
    )
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas.")
    target_in_flight_requests: Quantity = Field(
        default="8",
        description="Average `lamina_requests_in_flight` per pod the autoscaler aims for.",
    )
    target_queue_depth: Quantity | None = Field(
        default=None,
        description="Also scale on `lamina_queue_depth` (prompts waiting in the engine), "
        "aiming for this average per pod (KEDA).",
    )
    scale_to_zero_after_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="With minReplicas 0: seconds without requests in flight before the last "
        "pod stops (KEDA's cooldownPeriod).",
    )
    polling_interval_seconds: int = Field(
        default=15, ge=1, le=3600, description="How often KEDA queries Prometheus."
    )
    prometheus: PrometheusSource = Field(
        default_factory=PrometheusSource, description="Where KEDA reads the metrics."
    )
    target_cpu_utilization_percentage: int | None = Field(
        default=None,
        alias="targetCPUUtilizationPercentage",
        ge=1,
        le=1000,
        description="Also scale on CPU utilisation of the pods (a fallback signal).",
    )
    behavior: AutoscalingBehavior = Field(
        default_factory=AutoscalingBehavior, description="Scale-up and scale-down behaviour."
    )


class ComputeResources(ApiModel):
    """CPU and memory of the server container."""

    cpu: IntOrString | None = Field(default=None, description="CPU, e.g. 8 or 7500m.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 64Gi.")


class ResourcesSpec(ApiModel):
    """What each server pod asks for."""

    use_gpu: bool = Field(
        default=True,
        alias="useGPU",
        description="Request GPUs (tensorParallelSize × pipelineParallelSize per pod). "
        "false runs on CPU only.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        pattern=r"^([a-z0-9.-]+/)?[a-zA-Z0-9._-]+$",
        max_length=253,
        description="Extended resource name of the GPUs (nvidia.com/gpu, amd.com/gpu, ...).",
    )
    requests: ComputeResources = Field(
        default_factory=ComputeResources, description="CPU and memory requests."
    )
    limits: ComputeResources = Field(
        default_factory=ComputeResources, description="CPU and memory limits."
    )


class ModelCacheSpec(ApiModel):
    """Where model weights are cached (mounted at /cache)."""

    rules = (
        Rule(
            "!(has(self.persistentVolumeClaim) && has(self.emptyDirSizeLimit))",
            "modelCache: set persistentVolumeClaim or emptyDirSizeLimit, not both",
            lambda c: c.persistent_volume_claim is None or c.empty_dir_size_limit is None,
        ),
    )

    persistent_volume_claim: str | None = Field(
        default=None,
        max_length=253,
        description="Name of an existing PersistentVolumeClaim to cache models in.",
    )
    empty_dir_size_limit: Quantity | None = Field(
        default=None,
        description="Size limit of the emptyDir cache used when no claim is named (default 100Gi).",
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret of the same namespace; its value never enters the spec."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


class SecretsSpec(ApiModel):
    """Secrets, by reference only."""

    hf_token: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token for gated models (env HF_TOKEN)."
    )
    api_key: SecretKeyRef | None = Field(
        default=None,
        description="Bearer key clients must send (env LAMINA_API_KEY). Health and metrics "
        "stay open.",
    )


class SchedulingSpec(ApiModel):
    """Where server pods may run."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels to match.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations (core/v1 Toleration).",
        json_schema_extra={
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity (core/v1 Affinity).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, description="RuntimeClass of the pods (e.g. nvidia)."
    )


class ServiceSpec(ApiModel):
    """The Service in front of the servers."""

    type: ServiceType = Field(default=ServiceType.CLUSTER_IP, description="Service type.")
    port: int = Field(default=8000, ge=1, le=65535, description="Service port (named http).")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the Service."
    )
    max_requests_per_connection: int = Field(
        default=100,
        ge=1,
        le=1000000,
        description="Answers a server gives on one keep-alive connection before closing "
        "it (Connection: close). The Service balances connections, not requests: clients "
        "that keep theirs (the OpenAI SDKs do) reach replicas added since only when they "
        "reconnect.",
    )


class ProbesSpec(ApiModel):
    """Health checking of the server pods."""

    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description="How long a pod may take to download and load the model before it is "
        "restarted.",
    )
    period_seconds: int = Field(default=10, ge=1, le=300, description="Seconds between probes.")


class RolloutSpec(ApiModel):
    """Rolling update of the Deployment."""

    max_surge: IntOrString = Field(
        default=0,
        description="Extra pods during a rollout (0 avoids needing spare GPUs).",
    )
    max_unavailable: IntOrString = Field(
        default=1, description="Pods that may be down during a rollout."
    )
    termination_grace_period_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Time a stopping pod has to finish in-flight requests.",
    )


class DisruptionBudgetSpec(ApiModel):
    """PodDisruptionBudget, created when more than one replica can exist."""

    rules = (
        Rule(
            "!(has(self.minAvailable) && has(self.maxUnavailable))",
            "disruptionBudget: set minAvailable or maxUnavailable, not both",
            lambda d: d.min_available is None or d.max_unavailable is None,
        ),
    )

    enabled: bool = Field(default=True, description="Create a PodDisruptionBudget.")
    min_available: IntOrString | None = Field(
        default=None, description="Pods that must stay up during voluntary disruptions."
    )
    max_unavailable: IntOrString | None = Field(
        default=None, description="Pods that may be down (default 1 when neither is set)."
    )


class CostSpec(ApiModel):
    """What the deployment's accelerators cost, and the monthly budget they must fit in."""

    rules = (
        Rule(
            "!self.suspendOverBudget || has(self.monthlyBudget)",
            "cost.suspendOverBudget needs cost.monthlyBudget",
            lambda c: not c.suspend_over_budget or c.monthly_budget is not None,
        ),
    )

    price_per_hour: float = Field(
        ge=0,
        le=1_000_000,
        description="Price of one accelerator-hour: per GPU-hour when resources.useGPU is true "
        "(a pod with tensor × pipeline GPUs costs that many times this per hour), per "
        "pod-hour on CPU. 0 counts hours only.",
    )
    currency: str = Field(
        default="USD",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of the prices and the budget (e.g. USD, EUR).",
    )
    monthly_budget: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000_000_000,
        description="What one calendar month (UTC) may cost. BudgetWarning turns true when "
        "the month's projected cost reaches 80 % of it, BudgetExceeded at 100 %.",
    )
    suspend_over_budget: bool = Field(
        default=False,
        description="Scale the pods to zero once the month's cost reaches monthlyBudget, "
        "until it allows again (next month, or a higher budget). spec.replicas and "
        "spec.suspend are left as they are.",
    )


# The images `make image` builds (operator/Dockerfile, server/Dockerfile{,.cpu}); the
# operator's --server-image/--server-image-cpu (chart: serverImage) override.
DEFAULT_IMAGE = "ghcr.io/lamina-dev/lamina-server:0.1.0"
DEFAULT_CPU_IMAGE = "ghcr.io/lamina-dev/lamina-server:0.1.0-cpu"


class LLMDeploymentSpec(ApiModel):
    """Desired state of one hidden-state server deployment."""

    rules = (
        Rule(
            "self.resources.useGPU || (self.engine.tensorParallelSize == 1 && "
            "self.engine.pipelineParallelSize == 1)",
            "tensor or pipeline parallelism needs GPUs: set resources.useGPU to true",
            lambda s: (
                s.resources.use_gpu
                or s.engine.tensor_parallel_size * s.engine.pipeline_parallel_size == 1
            ),
        ),
    )

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    hidden_states: HiddenStatesSpec = Field(
        default_factory=HiddenStatesSpec, description="Hidden-state API defaults and limits."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Server pods. Written by the autoscaler when autoscaling is enabled "
        "(through the scale subresource, so `kubectl scale` works too).",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Autoscaling on in-flight requests."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPU, CPU and memory per pod."
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Server image. Default: the operator's server image for GPUs, or its CPU "
        "image when resources.useGPU is false (chart value serverImage: <tag> and <tag>-cpu).",
    )
    image_pull_policy: PullPolicy = Field(
        default=PullPolicy.IF_NOT_PRESENT, description="Image pull policy."
    )
    model_cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec, description="Model weight cache volume."
    )
    secrets: SecretsSpec = Field(default_factory=SecretsSpec, description="Secret references.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Node selection and placement."
    )
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The Service.")
    probes: ProbesSpec = Field(default_factory=ProbesSpec, description="Probe timings.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout strategy.")
    disruption_budget: DisruptionBudgetSpec = Field(
        default_factory=DisruptionBudgetSpec, description="PodDisruptionBudget."
    )
    suspend: bool = Field(
        default=False,
        description="Scale to zero pods and keep everything else (Service, HPA, settings).",
    )
    cost: CostSpec | None = Field(
        default=None,
        description="Price and monthly budget: the operator keeps accelerator-hours and cost "
        "in status.cost. Unset: no accounting.",
    )

    @property
    def gpus_per_pod(self) -> int:
        """GPUs each pod requests: one per tensor-parallel rank and pipeline stage."""
        if not self.resources.use_gpu:
            return 0
        return self.engine.tensor_parallel_size * self.engine.pipeline_parallel_size


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(
        description="Ready, Progressing, Degraded; BudgetWarning and BudgetExceeded with a budget."
    )
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word for machines.")
    message: str = Field(description="A sentence for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int = Field(description="The generation this condition is about.")


class ModelFacts(ApiModel):
    """What is known about the model's shape."""

    num_layers: int | None = Field(default=None, description="Decoder layers.")
    hidden_size: int | None = Field(default=None, description="Hidden size.")
    source: str | None = Field(default=None, description="Where these facts come from.")


class LedgerEntry(ApiModel):
    """One pod's running interval, counted once by its UID."""

    uid: str = Field(description="The pod's UID.")
    pod: str = Field(description="The pod's name.")
    accelerators: int = Field(description="GPUs the pod holds (1 per pod on CPU).")
    start: str = Field(description="When its first container started (RFC 3339).")
    end: str | None = Field(default=None, description="When it stopped; unset while it runs.")


class MonthCost(ApiModel):
    """A finished calendar month."""

    month: str = Field(description="The month, YYYY-MM (UTC).")
    accelerator_seconds: int = Field(description="Accelerator-seconds of the month.")
    accelerator_hours: float = Field(description="The same in hours.")
    cost: float = Field(description="What the month cost.")
    currency: str = Field(description="Currency of cost.")
    budget: float | None = Field(default=None, description="The monthly budget at its end.")


class CostStatus(ApiModel):
    """Accelerator-hours and cost, derived from the pods' running intervals."""

    month: str = Field(description="The current month, YYYY-MM (UTC).")
    as_of: str = Field(description="The moment the figures describe (RFC 3339).")
    accelerator: str = Field(
        description="What the hours are of: the GPU resource name, or `pod` on CPU."
    )
    currency: str = Field(description="Currency of the amounts.")
    price_per_hour: float = Field(description="Price of one accelerator-hour used.")
    accelerator_seconds: int = Field(description="Accelerator-seconds this month so far.")
    accelerator_hours: float = Field(description="Accelerator-hours this month so far.")
    cost: float = Field(description="Cost this month so far.")
    projected_cost: float = Field(
        description="This month's cost if the accelerators running now run to its end."
    )
    running_accelerators: int = Field(description="Accelerators running at asOf.")
    budget: float | None = Field(default=None, description="spec.cost.monthlyBudget.")
    settled_seconds: int = Field(
        description="Accelerator-seconds this month of pods gone and folded out of the ledger."
    )
    ledger: list[LedgerEntry] = Field(
        default_factory=list,
        description="This month's pods not yet settled: running, or stopped recently.",
    )
    history: list[MonthCost] = Field(
        default_factory=list,
        max_length=HISTORY_MONTHS,
        description=f"Previous months, newest first (at most {HISTORY_MONTHS}).",
    )


class LLMDeploymentStatus(ApiModel):
    """Observed state, written by the operator only when it changes."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    replicas: int = Field(default=0, description="Server pods that exist.")
    ready_replicas: int = Field(default=0, description="Server pods that are ready.")
    ready: str | None = Field(default=None, description="Ready/desired pods, e.g. 2/3.")
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoint: str | None = Field(default=None, description="In-cluster URL of the Service.")
    model: ModelFacts | None = Field(default=None, description="Model facts when known.")
    cost: CostStatus | None = Field(
        default=None, description="Accelerator-hours and cost, when spec.cost is set."
    )


MAX_NAME_LENGTH = 52
NAME_RULE = Rule(
    f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child names and labels "
    "derive from it)",
    lambda name: len(name) <= MAX_NAME_LENGTH,
)


class LLMDeployment(ApiModel):
    """An LLM served by vLLM with its hidden states exposed over HTTP."""

    # Rules on metadata.name: the operator checks them on the name it is given
    # (validation.parse_spec), as the typed model holds no metadata.
    name_rules: ClassVar[tuple[Rule, ...]] = (NAME_RULE,)

    spec: LLMDeploymentSpec = Field(description="Desired state.")
    status: LLMDeploymentStatus | None = Field(default=None, description="Observed state.")
