"""compute_status: conditions a user reads in `kubectl get llmd` and `kubectl describe`."""

from __future__ import annotations

from typing import Any

from lamina_operator.render import Owner
from lamina_operator.spec import LLMDeploymentSpec
from lamina_operator.status import compute_status, invalid_verdict, judge, status_patch

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
        verdict=judge(spec, OWNER, deployment),
        spec=spec,
        facts=None,
        deployment=deployment,
        previous=kw.get("previous", {}),
        now=kw.get("now", T0),
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
        verdict=invalid_verdict("layer 40 is beyond 32"),
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
