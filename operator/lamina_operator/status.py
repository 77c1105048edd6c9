"""Compute an LLMDeployment's status from what is observed. Pure: the clock is an argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina_operator.cost import BUDGET_EXCEEDED, BUDGET_WARNING, CostReport
from lamina_operator.identity import Manifest, Owner, selector_string
from lamina_operator.render import desired_replicas, endpoint
from lamina_operator.spec import LLMDeploymentSpec, ModelFacts

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
SERVER_FAILURES = ("OutOfMemory", "ServerFailing")
Condition = tuple[bool, str, str]  # status, reason, message


@dataclass(frozen=True)
class Conditions:
    """The three conditions' status, reason and message in one place."""

    ready: Condition
    progressing: Condition
    degraded: Condition


def set_condition(
    previous: Sequence[Mapping[str, Any]],
    kind: str,
    true: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> Manifest:
    """A condition that keeps its lastTransitionTime unless its status flips."""
    status = "True" if true else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = now
    if before is not None and before.get("status") == status:
        since = before["lastTransitionTime"]  # the status held: keep when it last flipped
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _deployment_condition(deployment: Manifest, kind: str) -> Mapping[str, Any] | None:
    conditions = deployment.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == kind), None)


def server_failure(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why a server container that is not ready last stopped, when it stopped badly:
    ``("OutOfMemory" | "ServerFailing", message)``. The server writes what to change
    (e.g. a memory limit too small for the model) as its termination message."""
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name"))):
        name = pod.get("metadata", {}).get("name")
        for container in pod.get("status", {}).get("containerStatuses", []):
            last = container.get("lastState", {}).get("terminated")
            if container.get("ready") or not last or last.get("exitCode") == 0:
                continue
            if last.get("reason") == "OOMKilled":
                return (
                    "OutOfMemory",
                    f"pod {name}: the server was killed for using more memory than its "
                    "limit; raise spec.resources.limits.memory",
                )
            detail = (last.get("message") or "").strip().splitlines()
            why = detail[-1] if detail else f"exit code {last.get('exitCode')}"
            restarts = container.get("restartCount", 0)
            return "ServerFailing", f"pod {name}: the server stopped ({restarts} restarts): {why}"
    return None


def missing_add_on(add_ons: Sequence[str]) -> str | None:
    """What to do when the cluster lacks an add-on the spec needs (KEDA)."""
    if "KEDA" not in add_ons:
        return None
    return (
        "autoscaling.autoscaler is KEDA but this cluster serves no ScaledObject "
        "(keda.sh/v1alpha1): install KEDA (https://keda.sh/docs/latest/deploy/), or set "
        "spec.autoscaling.autoscaler: HPA to use your own metrics adapter"
    )


def assess_conditions(
    spec: LLMDeploymentSpec,
    owner: Owner,
    deployment: Manifest | None,
    pods: Sequence[Mapping[str, Any]] = (),
    autoscaling_problem: str | None = None,
    budget_hold: str | None = None,
) -> Conditions:
    """Ready/Progressing/Degraded of a valid spec given the observed Deployment and
    its pods; ``autoscaling_problem`` says why the autoscaler is missing,
    ``budget_hold`` why the budget holds the pods at zero, if it does."""
    healthy = (False, "AsExpected", "no problems seen")
    if autoscaling_problem is not None:
        # The servers may well serve; they just will not scale. Say it, loudly.
        healthy = (True, "AutoscalingUnavailable", autoscaling_problem)
    if deployment is None:
        creating = "creating the server Deployment"
        return Conditions((False, "Creating", creating), (True, "Creating", creating), healthy)

    desired = desired_replicas(spec, budget_hold is not None)
    observed = deployment.get("status", {})
    ready = observed.get("readyReplicas", 0)
    generation_seen = observed.get("observedGeneration", 0) >= deployment["metadata"].get(
        "generation", 0
    )
    rolled_out = (
        generation_seen
        and observed.get("updatedReplicas", 0) >= desired
        and observed.get("replicas", 0) == desired
    )

    degraded = _degraded(deployment, pods) or healthy
    counts = f"{ready}/{desired} replicas ready"
    if spec.suspend or budget_hold is not None:
        held = (
            (False, "Suspended", "suspended: scaled to zero, everything else kept")
            if spec.suspend
            else (False, "OverBudget", str(budget_hold))
        )
        done = observed.get("replicas", 0) == 0
        return Conditions(
            held, (not done, "Suspending" if not done else "Suspended", counts), degraded
        )
    if desired == 0:
        idle = (
            f"idle: scaled to zero by the autoscaler; `lamina up {owner.name}` starts it"
            if spec.autoscaling.enabled
            else "spec.replicas is 0"
        )
        return Conditions(
            (False, "ScaledToZero", idle),
            (not rolled_out, "ScalingDown" if not rolled_out else "ScaledToZero", counts),
            degraded,
        )
    if rolled_out and ready >= desired:
        return Conditions(
            (True, "AllReplicasReady", f"{counts}, serving at {endpoint(owner, spec)}"),
            (False, "RolloutComplete", counts),
            degraded,
        )
    reason = "RollingOut" if not rolled_out else "WaitingForReplicas"
    if degraded[0] and degraded[1] in SERVER_FAILURES:
        # `kubectl get llmd` shows the Ready reason: say why pods are not ready.
        return Conditions(
            (False, degraded[1], f"{counts}; {degraded[2]}"), (True, reason, counts), degraded
        )
    return Conditions((False, reason, counts), (True, reason, counts), degraded)


def _degraded(deployment: Manifest, pods: Sequence[Mapping[str, Any]]) -> Condition | None:
    """Degraded=True and why, when the Deployment or its server pods say so."""
    failure = _deployment_condition(deployment, "ReplicaFailure")
    progress = _deployment_condition(deployment, "Progressing")
    if failure is not None and failure.get("status") == "True":
        return (True, "ReplicaFailure", str(failure.get("message", "pods cannot be created")))
    if progress is not None and progress.get("reason") == "ProgressDeadlineExceeded":
        return (True, "ProgressDeadlineExceeded", str(progress.get("message", "")))
    failed = server_failure(pods)
    return None if failed is None else (True, *failed)


def invalid_spec_conditions(message: str) -> Conditions:
    """The conditions for a spec that cannot be served as written."""
    return Conditions(
        (False, "InvalidSpec", message),
        (False, "InvalidSpec", "waiting for the spec to be fixed"),
        (True, "InvalidSpec", message),
    )


def compute_status(
    *,
    owner: Owner,
    generation: int,
    conditions: Conditions,
    spec: LLMDeploymentSpec | None,
    facts: ModelFacts | None,
    deployment: Manifest | None,
    previous: Mapping[str, Any],
    now: str,
    cost: CostReport | None = None,
) -> Manifest:
    """The full status object (camelCase), ready to compare with the stored one.

    With an invalid spec (`spec` None) the accounting cannot run: status.cost and the
    budget conditions are kept as they were rather than dropped, since the ledger in
    status.cost is the only record of pods already gone."""
    before = previous.get("conditions", [])
    parts = [
        (READY, conditions.ready),
        (PROGRESSING, conditions.progressing),
        (DEGRADED, conditions.degraded),
    ]
    budget = cost.budget if cost is not None else None
    if budget is not None:
        parts += [(BUDGET_WARNING, budget.warning), (BUDGET_EXCEEDED, budget.exceeded)]
    listed = [
        set_condition(before, kind, *part, generation=generation, now=now) for kind, part in parts
    ]
    if spec is None:
        listed += [c for c in before if c.get("type") in (BUDGET_WARNING, BUDGET_EXCEEDED)]
    observed = (deployment or {}).get("status", {})
    ready = observed.get("readyReplicas", 0)
    status: Manifest = {
        "observedGeneration": generation,
        "conditions": listed,
        "replicas": observed.get("replicas", 0),
        "readyReplicas": ready,
        "selector": selector_string(owner),
    }
    if spec is not None:
        held = budget is not None and budget.hold
        status["ready"] = f"{ready}/{desired_replicas(spec, held)}"
        status["endpoint"] = endpoint(owner, spec)
    if facts is not None:
        status["model"] = facts.model_dump(by_alias=True, exclude_none=True)
    if cost is not None:
        status["cost"] = cost.status
    elif spec is None and "cost" in previous:
        status["cost"] = previous["cost"]
    return status


def status_patch(previous: Mapping[str, Any], status: Manifest) -> Manifest | None:
    """A merge patch turning `previous` into `status`, or None when nothing changed."""
    if all(previous.get(k) == v for k, v in status.items()) and set(previous) <= set(status):
        return None
    return {**{k: None for k in previous if k not in status}, **status}
