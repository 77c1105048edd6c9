"""The reconcile's decisions, pure: which children to apply or prune, and which status
changes are news (Events). No API: these are functions of what the operator has seen."""

from __future__ import annotations

from typing import Any

from lamina_operator.identity import Manifest, Owner
from lamina_operator.reconcile import KnownState, plan_children, status_events
from lamina_operator.render import render_children
from lamina_operator.spec import LLMDeploymentSpec

OWNER = Owner(name="llama", namespace="ml", uid="u")


def desired(**extra: Any) -> dict[str, Manifest]:
    """Two replicas: a Deployment, a Service and a PodDisruptionBudget."""
    spec = LLMDeploymentSpec.model_validate({"model": {"name": "m"}, "replicas": 2, **extra})
    return render_children(OWNER, spec)


def stored(manifest: Manifest, resource_version: int = 1) -> Manifest:
    """What the API answers to an apply: the manifest with a resourceVersion."""
    meta = {**manifest["metadata"], "resourceVersion": str(resource_version)}
    return {**manifest, "metadata": meta}


def applied_all(children: dict[str, Manifest]) -> KnownState:
    memory = KnownState()
    for kind, manifest in children.items():
        memory.record((kind, OWNER.namespace, OWNER.name), manifest, stored(manifest))
    return memory


def kinds(keys: Any) -> set[str]:
    return {key[0] for key in keys}


def test_a_new_deployment_applies_every_child_and_prunes_nothing() -> None:
    children = desired()
    changes = plan_children(OWNER, children, KnownState())
    assert kinds(key for key, _ in changes.apply) == set(children)
    assert changes.prune == ()


def test_an_idle_reconcile_changes_nothing() -> None:
    children = desired()
    changes = plan_children(OWNER, children, applied_all(children))
    assert changes.apply == ()
    assert changes.prune == ()


def test_a_child_edited_by_hand_is_applied_again_alone() -> None:
    children = desired()
    memory = applied_all(children)
    service = stored(children["Service"], resource_version=7)
    memory.cache.seen(("Service", "ml", "llama"), {**service, "spec": {"type": "NodePort"}})
    changes = plan_children(OWNER, children, memory)
    assert [(key, manifest) for key, manifest in changes.apply] == [
        (("Service", "ml", "llama"), children["Service"])
    ]


def test_a_child_deleted_by_hand_is_applied_again() -> None:
    children = desired()
    memory = applied_all(children)
    memory.cache.gone(("Service", "ml", "llama"))
    assert kinds(key for key, _ in plan_children(OWNER, children, memory).apply) == {"Service"}


def test_a_spec_change_applies_only_the_children_it_changes() -> None:
    memory = applied_all(desired())
    changes = plan_children(OWNER, desired(service={"port": 9000}), memory)
    assert "Service" in kinds(key for key, _ in changes.apply)
    assert "PodDisruptionBudget" in desired()
    assert "PodDisruptionBudget" not in kinds(key for key, _ in changes.apply)


def test_children_no_longer_wanted_are_pruned_and_unknown_ones_left_alone() -> None:
    with_autoscaling = desired(autoscaling={"enabled": True, "autoscaler": "HPA"})
    memory = applied_all(with_autoscaling)
    changes = plan_children(OWNER, desired(), memory)
    assert changes.prune == (("HorizontalPodAutoscaler", "ml", "llama"),)
    assert plan_children(OWNER, desired(), KnownState()).prune == ()


def status(ready: str, reason: str, message: str = "m", **budget: str) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready, "reason": reason, "message": message}]
    conditions += [{"type": k, "status": v, "message": f"{k}!"} for k, v in budget.items()]
    return {"conditions": conditions}


def test_becoming_ready_and_losing_readiness_are_news() -> None:
    assert status_events(status("False", "Progressing"), status("True", "Ready", "up")) == [
        ("Normal", "Ready", "up")
    ]
    assert status_events(status("True", "Ready"), status("False", "Degraded", "oom")) == [
        ("Warning", "Degraded", "oom")
    ]


def test_stopping_on_purpose_is_normal_and_a_steady_status_is_silent() -> None:
    assert status_events(status("True", "Ready"), status("False", "Suspended", "s")) == [
        ("Normal", "Suspended", "s")
    ]
    assert status_events(status("True", "Ready"), status("True", "Ready")) == []


def test_an_invalid_spec_is_announced_once_per_message() -> None:
    before = status("False", "InvalidSpec", "bad port")
    assert status_events(before, status("False", "InvalidSpec", "bad port")) == []
    assert status_events(before, status("False", "InvalidSpec", "bad model")) == [
        ("Warning", "InvalidSpec", "bad model")
    ]


def test_a_budget_condition_turning_true_is_a_warning() -> None:
    before = status("True", "Ready", BudgetWarning="False")
    after = status("True", "Ready", BudgetWarning="True")
    assert status_events(before, after) == [("Warning", "BudgetWarning", "BudgetWarning!")]
