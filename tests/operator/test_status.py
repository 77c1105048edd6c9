"""compute_status: conditions a user reads in `kubectl get llmd` and `kubectl describe`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lamina_operator.cost import account, pod_run
from lamina_operator.identity import Owner
from lamina_operator.spec import LLMDeploymentSpec
from lamina_operator.status import (
    assess_conditions,
    compute_status,
    invalid_spec_conditions,
    missing_add_on,
    status_patch,
)

OWNER = Owner(name="llama", namespace="ml", uid="u")
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def _spec(**extra: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate({"model": {"name": "m"}, **extra})


def _deployment(replicas: int, ready: int, updated: int, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _status(spec: LLMDeploymentSpec, deployment: dict[str, Any] | None, **kw: Any) -> Any:
    return compute_status(
        owner=OWNER,
        generation=kw.get("generation", 1),
        conditions=assess_conditions(spec, OWNER, deployment),
        spec=spec,
        facts=None,
        deployment=deployment,
        previous=kw.get("previous", {}),
        now=kw.get("now", T0),
        cost=kw.get("cost"),
    )


def test_all_replicas_ready_is_ready_with_endpoint() -> None:
    status = _status(_spec(replicas=2), _deployment(2, 2, 2))
    assert _conditions(status)["Ready"] == ("True", "AllReplicasReady")
    assert _conditions(status)["Progressing"] == ("False", "RolloutComplete")
    assert status["ready"] == "2/2"
    assert status["endpoint"] == "http://llama.ml.svc:8000"
    assert (
        status["selector"]
        == "app.kubernetes.io/instance=llama,app.kubernetes.io/name=lamina-server"
    )


def test_rollout_in_progress_is_not_ready() -> None:
    status = _status(_spec(replicas=2), _deployment(3, 2, 1))
    assert _conditions(status)["Ready"] == ("False", "RollingOut")
    assert _conditions(status)["Progressing"] == ("True", "RollingOut")


def test_stale_deployment_generation_is_not_ready() -> None:
    deployment = _deployment(1, 1, 1)
    deployment["metadata"]["generation"] = 2
    assert _conditions(_status(_spec(), deployment))["Ready"][0] == "False"


def test_suspended() -> None:
    status = _status(_spec(replicas=3, suspend=True), _deployment(0, 0, 0))
    assert _conditions(status)["Ready"] == ("False", "Suspended")
    assert status["ready"] == "0/0"


def test_progress_deadline_is_degraded() -> None:
    deployment = _deployment(1, 0, 1)
    deployment["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing.",
        }
    ]
    assert _conditions(_status(_spec(), deployment))["Degraded"] == (
        "True",
        "ProgressDeadlineExceeded",
    )


def test_invalid_spec() -> None:
    status = compute_status(
        owner=OWNER,
        generation=4,
        conditions=invalid_spec_conditions("layer 40 is beyond 32"),
        spec=None,
        facts=None,
        deployment=None,
        previous={},
        now=T0,
    )
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "InvalidSpec",
        4,
    )
    assert "layer 40" in ready["message"]


def test_transition_time_kept_while_status_holds_and_nothing_to_write() -> None:
    first = _status(_spec(), _deployment(1, 1, 1), now=T0)
    again = _status(_spec(), _deployment(1, 1, 1), now=T1, previous=first)
    assert again == first
    assert status_patch(first, again) is None


def test_transition_time_moves_when_status_flips() -> None:
    first = _status(_spec(), _deployment(1, 1, 1), now=T0)
    later = _status(_spec(), _deployment(1, 0, 1), now=T1, previous=first)
    ready = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == T1
    patch = status_patch(first, later)
    assert patch is not None
    assert patch["readyReplicas"] == 0


def test_patch_clears_fields_that_went_away() -> None:
    assert status_patch({"endpoint": "x", "replicas": 0}, {"replicas": 0}) == {
        "endpoint": None,
        "replicas": 0,
    }


def _pod(name: str, ready: bool, restarts: int = 1, **terminated: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "ready": ready, "restartCount": restarts}
    if terminated:
        container["lastState"] = {"terminated": terminated}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [container]}}


def _status_with_pods(pods: list[dict[str, Any]]) -> Any:
    spec = _spec(replicas=2)
    deployment = _deployment(2, 1, 2)
    return compute_status(
        owner=OWNER,
        generation=1,
        conditions=assess_conditions(spec, OWNER, deployment, pods),
        spec=spec,
        facts=None,
        deployment=deployment,
        previous={},
        now=T0,
    )


def _condition(status: Any, kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_server_killed_for_memory_says_to_raise_the_limit() -> None:
    status = _status_with_pods(
        [_pod("a", True, 0), _pod("b", False, reason="OOMKilled", exitCode=137)]
    )
    degraded = _condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "OutOfMemory")
    assert "pod b" in degraded["message"]
    assert "spec.resources.limits.memory" in degraded["message"]
    # `kubectl get llmd` shows the Ready reason: it says why too.
    assert _condition(status, "Ready")["reason"] == "OutOfMemory"


def test_a_server_that_fails_to_start_reports_its_termination_message() -> None:
    message = (
        "not enough memory for the model: memory limit 2.00 GiB ...\n"
        "Give the server at least 4 GiB (resources.limits.memory)"
    )
    status = _status_with_pods([_pod("a", False, 3, reason="Error", exitCode=1, message=message)])
    degraded = _condition(status, "Degraded")
    assert degraded["reason"] == "ServerFailing"
    assert "3 restarts" in degraded["message"]
    assert "at least 4 GiB" in degraded["message"]


def test_a_past_restart_of_a_ready_server_is_not_degraded() -> None:
    status = _status_with_pods(
        [_pod("a", True, reason="OOMKilled", exitCode=137), _pod("b", True, 0)]
    )
    assert _condition(status, "Degraded")["status"] == "False"
    # Nor is a server stopped cleanly (exit 0, e.g. a drain) that is starting again.
    status = _status_with_pods([_pod("a", False, reason="Completed", exitCode=0)])
    assert _condition(status, "Degraded")["status"] == "False"
    assert _condition(status, "Ready")["reason"] == "WaitingForReplicas"


def test_keda_missing_is_degraded_while_the_servers_keep_serving() -> None:
    spec = _spec(autoscaling={"enabled": True})
    problem = missing_add_on(["KEDA"])
    assert problem is not None
    conditions = assess_conditions(spec, OWNER, _deployment(1, 1, 1), autoscaling_problem=problem)
    assert conditions.ready[:2] == (True, "AllReplicasReady")
    assert conditions.degraded[:2] == (True, "AutoscalingUnavailable")
    assert "install KEDA" in conditions.degraded[2]
    assert "autoscaler: HPA" in conditions.degraded[2]
    assert missing_add_on([]) is None


def test_scaled_to_zero_by_the_autoscaler_is_not_degraded_and_says_how_to_wake_it() -> None:
    spec = _spec(replicas=0, autoscaling={"enabled": True, "minReplicas": 0})
    conditions = assess_conditions(spec, OWNER, _deployment(0, 0, 0))
    assert conditions.ready[:2] == (False, "ScaledToZero")
    assert "lamina up llama" in conditions.ready[2]
    assert conditions.degraded[0] is False


def _spent_budget(suspend: bool) -> Any:
    """A month whose budget is spent: one GPU for 24 h at 2/h against a budget of 40."""
    cost = {"pricePerHour": 2, "monthlyBudget": 40, "suspendOverBudget": suspend}
    spec = _spec(replicas=2, cost=cost)
    pod = {
        "metadata": {"uid": "u1", "name": "p"},
        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {
            "containerStatuses": [{"state": {"running": {"startedAt": "2026-11-01T00:00:00Z"}}}]
        },
    }
    now = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    run = pod_run(pod, "nvidia.com/gpu", gone=False, observed_at=now)
    return spec, account(spec, None, [run], now, 60)


def test_a_spent_budget_with_suspend_holds_the_pods_and_says_why() -> None:
    spec, report = _spent_budget(suspend=True)
    deployment = _deployment(0, 0, 0)
    held = report.budget.exceeded[2]
    status = compute_status(
        owner=OWNER,
        generation=1,
        conditions=assess_conditions(spec, OWNER, deployment, budget_hold=held),
        spec=spec,
        facts=None,
        deployment=deployment,
        previous={},
        now=T0,
        cost=report,
    )
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "OverBudget")
    assert "reaching the 40.00 USD budget" in ready["message"]
    assert status["ready"] == "0/0"
    assert _condition(status, "BudgetExceeded")["reason"] == "BudgetSpent"
    assert _condition(status, "BudgetWarning")["status"] == "True"
    assert status["cost"]["cost"] == 48.0


def test_without_a_budget_there_are_no_budget_conditions() -> None:
    spec = _spec(cost={"pricePerHour": 2})
    report = account(spec, None, [], dt.datetime(2026, 11, 2, tzinfo=dt.UTC), 60)
    status = _status(spec, _deployment(1, 1, 1), cost=report)
    assert set(_conditions(status)) == {"Ready", "Progressing", "Degraded"}
    assert status["cost"]["cost"] == 0


def test_an_invalid_spec_keeps_the_ledger_and_budget_conditions() -> None:
    spec, report = _spent_budget(suspend=False)
    before = _status(spec, _deployment(1, 1, 1), cost=report)
    status = compute_status(
        owner=OWNER,
        generation=2,
        conditions=invalid_spec_conditions("bad"),
        spec=None,
        facts=None,
        deployment=None,
        previous=before,
        now=T1,
    )
    assert status["cost"] == before["cost"]
    assert _condition(status, "BudgetExceeded") == _condition(before, "BudgetExceeded")
