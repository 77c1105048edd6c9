"""Who a child is: the owning LLMDeployment, the labels that mark and select its
children, and the kinds of children there are. Shared by rendering, the reconcile,
status and the API client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

FIELD_MANAGER = "lamina-operator"


@dataclass(frozen=True)
class Owner:
    """The LLMDeployment whose children are rendered."""

    name: str
    namespace: str
    uid: str


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the server pods of one LLMDeployment (immutable once created)."""
    return {
        "app.kubernetes.io/name": "lamina-server",
        "app.kubernetes.io/instance": owner.name,
    }


def standard_labels(owner: Owner) -> dict[str, str]:
    """The `app.kubernetes.io/*` labels every child carries."""
    return {
        **selector_labels(owner),
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "lamina",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    }


def selector_string(owner: Owner) -> str:
    """The pod selector as the scale subresource and `kubectl get -l` want it."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


# Kinds the operator creates, in apply order, with their (group, version, plural);
# those that may be absent are pruned.
CHILD_RESOURCES: dict[str, tuple[str, str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
}
# Kinds that exist only where an add-on is installed (the rest is core Kubernetes).
ADD_ON_KINDS = {"ScaledObject": "KEDA"}
