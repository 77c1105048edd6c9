"""Prometheus metrics of the Lamina layer (next to vLLM's own ``vllm:*`` ones).

``lamina_requests_in_flight`` is the signal the HorizontalPodAutoscaler scales on.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

# Routes are labelled by template; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = (
    "/v1/hidden_states",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/healthz",
    "/readyz",
    "/metrics",
)


def route_label(path: str) -> str:
    return path if path in KNOWN_ROUTES else "other"


class Metrics:
    """The metric objects; one instance per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "lamina_requests",
            "HTTP requests served, by route and status code.",
            ["route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "lamina_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.in_flight = Gauge(
            "lamina_requests_in_flight",
            "Requests being served on the engine routes (/v1/*): the autoscaling signal.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "lamina_queue_depth",
            "Hidden-state prompts submitted to the engine and not finished yet.",
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "lamina_prompt_tokens",
            "Prompt tokens of hidden-state and embedding requests.",
            registry=registry,
        )
        self.hidden_state_bytes = Counter(
            "lamina_hidden_state_bytes",
            "Bytes of hidden states returned (raw, before JSON/base64 encoding).",
            registry=registry,
        )
        self.batch_size = Histogram(
            "lamina_batch_size",
            "Prompts per hidden-state or embedding request.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.model_info = Info(
            "lamina_model",
            "The served model: name, layers, hidden size.",
            registry=registry,
        )
