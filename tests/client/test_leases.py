"""The start/stop decisions (pure): leases, what is put back, readiness."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from lamina import leases
from lamina_operator import leases as operator_leases

T0 = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
TTL = datetime.timedelta(minutes=2)


def llmd(suspend: bool = True, replicas: int = 2, annotations: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": "m", "resourceVersion": "7", "annotations": annotations or {}},
        "spec": {"suspend": suspend, "replicas": replicas},
    }


def applied(obj: Any, patch: dict[str, Any]) -> Any:
    """A JSON merge patch applied as the API server does (None deletes)."""
    assert patch["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    out = json.loads(json.dumps(obj))
    for section in ("spec",):
        out[section].update(patch.get(section, {}))
    annotations = out["metadata"]["annotations"]
    for key, value in patch["metadata"].get("annotations", {}).items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    return out


def test_the_first_job_starts_it_and_the_last_one_puts_it_back() -> None:
    start = llmd(suspend=True, replicas=2)
    a = applied(start, leases.acquire(start, "a", T0, TTL))
    assert a["spec"] == {"suspend": False, "replicas": 2}
    b = applied(a, leases.acquire(a, "b", T0, TTL))
    assert leases.usage_of(b).restore == leases.Restore(suspend=True, replicas=2)
    after_a = applied(b, leases.release(b, "a", T0))
    assert after_a["spec"]["suspend"] is False, "b still runs"
    assert list(leases.usage_of(after_a).leases) == ["b"]
    after_b = applied(after_a, leases.release(after_a, "b", T0))
    assert after_b["spec"] == start["spec"]
    assert after_b["metadata"]["annotations"] == {}


def test_a_deployment_at_zero_replicas_comes_back_at_one_and_returns_to_zero() -> None:
    start = llmd(suspend=False, replicas=0)
    up = applied(start, leases.acquire(start, "a", T0, TTL))
    assert up["spec"] == {"suspend": False, "replicas": 1}
    assert applied(up, leases.release(up, "a", T0))["spec"] == start["spec"]


def test_an_expired_lease_does_not_keep_it_up() -> None:
    start = llmd()
    crashed = applied(start, leases.acquire(start, "crashed", T0, TTL))
    later = T0 + TTL + datetime.timedelta(seconds=1)
    # A new job after the crash records nothing new: the first record still holds.
    b = applied(crashed, leases.acquire(crashed, "b", later, TTL))
    assert list(leases.usage_of(b).leases) == ["b"], "the dead lease is dropped"
    assert leases.usage_of(b).restore == leases.Restore(suspend=True, replicas=2)
    assert applied(b, leases.release(b, "b", later))["spec"] == start["spec"]


def test_renewing_keeps_the_first_record_of_what_to_put_back() -> None:
    start = llmd()
    a = applied(start, leases.acquire(start, "a", T0, TTL))
    renewed = applied(a, leases.acquire(a, "a", T0 + TTL / 3, TTL))
    assert leases.usage_of(renewed).restore == leases.Restore(suspend=True, replicas=2)
    assert leases.usage_of(renewed).leases["a"] == T0 + TTL / 3 + TTL


def test_down_refuses_while_a_job_holds_it_and_names_the_job() -> None:
    start = llmd()
    held = applied(start, leases.acquire(start, "alice@box/42", T0, TTL))
    with pytest.raises(leases.InUse, match=r"alice@box/42 \(until 2026-11-23T12:02:00Z\).*--force"):
        leases.down(held, T0, force=False)
    forced = applied(held, leases.down(held, T0, force=True))
    assert forced["spec"]["suspend"] is True
    assert forced["metadata"]["annotations"] == {}


def test_up_by_hand_outlives_the_jobs() -> None:
    start = llmd()
    held = applied(start, leases.acquire(start, "a", T0, TTL))
    manual = applied(held, leases.up(held, "me", T0, ready=False))
    assert applied(manual, leases.release(manual, "a", T0))["spec"]["suspend"] is False


def test_unreadable_annotations_count_as_no_lease() -> None:
    start = llmd(annotations={leases.LEASES: "{not json", leases.RESTORE: '{"suspend": "yes"}'})
    usage = leases.usage_of(start)
    assert usage.leases == {}
    assert usage.restore is None
    assert leases.down(start, T0, force=False)["spec"] == {"suspend": True}


def test_the_operator_puts_it_back_only_when_every_lease_expired() -> None:
    start = llmd()
    a = applied(start, leases.acquire(start, "a", T0, TTL))
    b = applied(a, leases.acquire(a, "b", T0 + TTL / 2, TTL))
    meta = b["metadata"]
    assert operator_leases.overdue_restore(meta, T0 + TTL + datetime.timedelta(seconds=1)) is None
    assert operator_leases.seconds_to_expiry(meta, T0 + TTL) == pytest.approx(60)
    end = T0 + TTL * 3 / 2 + datetime.timedelta(seconds=1)
    patch = operator_leases.overdue_restore(meta, end)
    assert patch is not None
    assert applied(b, patch) == start
    assert operator_leases.overdue_restore(start["metadata"], end) is None


def readiness_of(status: dict[str, Any], generation: int = 3) -> leases.Readiness:
    return leases.readiness({"metadata": {"generation": generation}, "status": status})


def test_ready_means_a_ready_pod_for_the_current_spec() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "AllReplicasReady", "message": "1/1"}
    serving = {"observedGeneration": 3, "readyReplicas": 1, "ready": "1/1", "conditions": [ready]}
    assert readiness_of(serving).ready
    assert not readiness_of(serving, generation=4).ready, "status of the previous spec"
    starting = {
        "observedGeneration": 3,
        "readyReplicas": 0,
        "ready": "0/1",
        "conditions": [
            {**ready, "status": "False", "reason": "Starting", "message": "0/1"},
            {"type": "Progressing", "status": "True", "reason": "Rollout", "message": "loading"},
        ],
    }
    state = readiness_of(starting)
    assert not state.ready
    assert state.summary == "0/1 pods ready (Progressing Rollout: loading)"


def test_up_on_a_deployment_that_scales_to_zero_keeps_a_pod_for_one_idle_window() -> None:
    idle = llmd(suspend=False, replicas=0)
    idle["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "scaleToZeroAfterSeconds": 600,
    }
    idle["spec"]["probes"] = {"startupTimeoutSeconds": 900}
    # While the pod starts, the lease also covers the time it may take to start ...
    starting = applied(idle, leases.up(idle, "me", T0, ready=False))
    assert starting["spec"]["replicas"] == 1
    until = T0 + datetime.timedelta(seconds=1500)
    assert leases.usage_of(starting).leases == {"up/me": until}
    # ... and once it is ready, one idle window from then.
    woken = applied(starting, leases.up(starting, "me", T0, ready=True))
    assert leases.usage_of(woken).leases == {"up/me": T0 + datetime.timedelta(seconds=600)}
    # The operator keeps the autoscaler's minimum at one pod meanwhile ...
    assert operator_leases.held(woken["metadata"], T0 + datetime.timedelta(seconds=599))
    assert not operator_leases.held(woken["metadata"], T0 + datetime.timedelta(seconds=601))
    # ... and `down` is not refused by an `up`.
    assert applied(woken, leases.down(woken, T0, force=False))["spec"]["suspend"] is True
    # Without scale to zero, `up` takes no lease.
    assert leases.LEASES not in leases.up(llmd(), "me", T0, ready=True)["metadata"]["annotations"]
