"""Cost accounting against the real control plane and kwok's fake GPU nodes: the
figures in status.cost against the pods' own running time, through a scale-down, an
operator restart (with a pod deleted while it was down) and a budget that runs out."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from kube_cluster import Cluster, wait_until
from operator_harness import OperatorProcess, StartOperator

pytestmark = pytest.mark.cluster

# Figures move on every 2 s here (60 s by default) so the test runs for seconds.
FAST = {"LAMINA_COST_REFRESH_SECONDS": "2"}
GPU = "nvidia.com/gpu"


def llmd(name: str, **spec: Any) -> str:
    body = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, **spec}
    return yaml.safe_dump(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    return json.loads(cluster.kubectl("-n", namespace, "get", *what, "-o", "json").stdout)


def cost_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    cost: dict[str, Any] = get(cluster, namespace, "llmd", name).get("status", {}).get("cost", {})
    return cost


def pods_of(cluster: Cluster, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    """Running server pods by UID: their start and GPUs, as the pods themselves say."""
    items = get(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    found = {}
    for pod in items:
        (container,) = pod["status"].get("containerStatuses") or [{}]
        started = container.get("state", {}).get("running", {}).get("startedAt")
        if started and not pod["metadata"].get("deletionTimestamp"):
            gpus = int(pod["spec"]["containers"][0]["resources"]["limits"][GPU])
            found[pod["metadata"]["uid"]] = {"start": at(started), "gpus": gpus}
    return found


def wait_cost_after(
    cluster: Cluster, namespace: str, name: str, moment: dt.datetime, timeout: float = 60
) -> dict[str, Any]:
    """status.cost once its figures describe a time after `moment`."""

    def described_after() -> dict[str, Any] | None:
        cost = cost_of(cluster, namespace, name)
        return cost if cost and at(cost["asOf"]) > moment else None

    return wait_until(
        described_after,
        timeout=timeout,
        what=f"status.cost after {moment:%H:%M:%S}",
    )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def seconds(a: dt.datetime, b: dt.datetime) -> int:
    return int((b - a).total_seconds())


def metric_matches_status(
    cluster: Cluster, namespace: str, name: str, operator: OperatorProcess
) -> tuple[float, float, dict[str, Any]]:
    """The operator's counters and status.cost read together (both move every refresh)."""

    def read() -> tuple[float, float, dict[str, Any]] | None:
        labels = {"namespace": namespace, "name": name}
        before = operator.metric("lamina_accelerator_seconds_total", **labels)
        cost = cost_of(cluster, namespace, name)
        money = operator.metric("lamina_cost_total", **labels, currency="USD")
        after = operator.metric("lamina_accelerator_seconds_total", **labels)
        consistent = before == after == cost["acceleratorSeconds"]
        return (after, money, cost) if consistent else None

    return wait_until(read, timeout=30, what="metrics and status at the same asOf")


def test_status_cost_is_the_pods_running_time_through_scale_down_and_restart(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    operator = run_operator(namespace, FAST)
    price = 3.6  # per GPU-hour: 0.001 a GPU-second
    spec = {"replicas": 2, "engine": {"tensorParallelSize": 2}, "cost": {"pricePerHour": price}}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("c", **spec))
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "llmd/c", "--timeout=90s")
    pods = pods_of(cluster, namespace, "c")
    assert len(pods) == 2
    assert all(p["gpus"] == 2 for p in pods.values())
    latest_start = max(p["start"] for p in pods.values())
    wait_cost_after(cluster, namespace, "c", latest_start + dt.timedelta(seconds=20))

    # Scale down: the pod that goes away still counts, up to when it was deleted.
    asked = utc_now().replace(microsecond=0)
    cluster.kubectl("-n", namespace, "scale", "llmd/c", "--replicas=1")
    wait_until(lambda: len(pods_of(cluster, namespace, "c")) == 1, timeout=30, what="one pod left")
    gone_seen = utc_now()
    (removed,) = set(pods) - set(pods_of(cluster, namespace, "c"))
    cost = wait_cost_after(cluster, namespace, "c", gone_seen + dt.timedelta(seconds=10))

    as_of = at(cost["asOf"])
    ledger = {e["uid"]: e for e in cost["ledger"]}
    assert set(ledger) == set(pods)
    for uid, pod in pods.items():
        assert at(ledger[uid]["start"]) == pod["start"]
        assert ledger[uid]["accelerators"] == 2
    end = at(ledger[removed]["end"])
    assert asked <= end <= gone_seen + dt.timedelta(seconds=1)
    # The pods' own running time, estimated independently: deletion halfway through
    # the window in which it happened.
    halfway = asked + (gone_seen - asked) / 2
    actual = sum(
        2 * seconds(p["start"], halfway if uid == removed else as_of) for uid, p in pods.items()
    )
    assert cost["acceleratorSeconds"] == pytest.approx(actual, rel=0.01)
    exact = 2 * seconds(pods[removed]["start"], end) + sum(
        2 * seconds(p["start"], as_of) for uid, p in pods.items() if uid != removed
    )
    assert cost["acceleratorSeconds"] == exact
    assert cost["cost"] == pytest.approx(exact / 1000, abs=1e-5)
    assert cost["runningAccelerators"] == 2
    month_end = dt.datetime(as_of.year + as_of.month // 12, as_of.month % 12 + 1, 1, tzinfo=dt.UTC)
    projected = (exact + 2 * seconds(as_of, month_end)) / 1000
    assert cost["projectedCost"] == pytest.approx(projected, abs=1e-5)

    _, cost_metric, cost = metric_matches_status(cluster, namespace, "c", operator)
    assert cost_metric == pytest.approx(cost["cost"])
    header, line = cluster.kubectl("-n", namespace, "get", "llmd", "c", "-o", "wide").stdout.split(
        "\n"
    )[:2]
    assert header.split()[-4:] == ["ACCEL-HOURS", "COST", "PROJECTED", "CURRENCY"]
    assert line.split()[-1] == "USD"

    # The operator goes down; meanwhile the remaining pod is deleted (its replacement
    # starts). The deleted pod was last seen running at the last asOf before the stop.
    operator.stop()
    last = cost_of(cluster, namespace, "c")
    (survivor,) = pods_of(cluster, namespace, "c")
    cluster.kubectl("-n", namespace, "delete", "pod", "-l", "app.kubernetes.io/instance=c")
    replacement = wait_until(
        lambda: set(pods_of(cluster, namespace, "c")) - {survivor},
        timeout=30,
        what="a replacement pod",
    )
    operator = run_operator(namespace, FAST)
    restarted = utc_now()
    cost = wait_cost_after(cluster, namespace, "c", restarted + dt.timedelta(seconds=4))
    as_of = at(cost["asOf"])
    ledger = {e["uid"]: e for e in cost["ledger"]}
    now_pods = pods_of(cluster, namespace, "c")
    assert set(now_pods) == replacement
    assert set(ledger) == {removed, survivor, *replacement}
    assert ledger[removed]["end"] == format_end(end)  # unchanged by the restart
    assert ledger[survivor]["end"] == last["asOf"]  # the documented limit
    expected = (
        2 * seconds(pods[removed]["start"], end)
        + 2 * seconds(pods[survivor]["start"], at(last["asOf"]))
        + sum(2 * seconds(p["start"], as_of) for p in now_pods.values())
    )
    assert cost["acceleratorSeconds"] == expected  # each second once, none twice
    assert cost["settledSeconds"] == 0
    seconds_metric, _, cost = metric_matches_status(cluster, namespace, "c", operator)
    assert seconds_metric == cost["acceleratorSeconds"]

    # `lamina cost` reads the same figures.
    def lamina_cost_row() -> tuple[dict[str, str], dict[str, Any]] | None:
        out = subprocess.run(
            [sys.executable, "-m", "lamina", "cost", "-n", namespace, "--csv"],
            env=cluster.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (row,) = csv.DictReader(io.StringIO(out))
        cost = cost_of(cluster, namespace, "c")
        return (row, cost) if row["as_of"] == cost["asOf"] else None

    row, cost = wait_until(lamina_cost_row, timeout=30, what="lamina cost at the status' asOf")
    assert (row["name"], row["accelerator"], row["currency"]) == ("c", GPU, "USD")
    assert float(row["accelerator_hours"]) == cost["acceleratorHours"]
    assert float(row["cost"]) == cost["cost"]
    assert float(row["projected_cost"]) == cost["projectedCost"]


def format_end(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def events_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")
    return [e for e in items["items"] if e["involvedObject"]["kind"] == "LLMDeployment"]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == kind), {})


def test_a_spent_budget_warns_once_scales_to_zero_and_resumes_when_raised(
    cluster: Cluster, namespace: str, run_operator: StartOperator
) -> None:
    operator = run_operator(namespace, FAST)
    # 1 per GPU-second: the projection of one GPU to the month's end is far over 20 at
    # once (both conditions turn true), and 20 are spent about 20 s after the pod starts.
    cost = {"pricePerHour": 3600, "monthlyBudget": 20, "suspendOverBudget": True}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("b", cost=cost))

    def over_budget() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "llmd", "b")
        return obj if condition(obj, "Ready").get("reason") == "OverBudget" else None

    obj = wait_until(over_budget, timeout=90, what="Ready=False, reason=OverBudget")
    assert "reaching the 20.00 USD budget" in condition(obj, "Ready")["message"]
    assert condition(obj, "BudgetExceeded")["reason"] == "BudgetSpent"
    assert condition(obj, "BudgetWarning")["status"] == "True"
    assert obj["status"]["cost"]["cost"] >= 20
    wait_until(
        lambda: (
            get(cluster, namespace, "deployment", "b")["spec"]["replicas"] == 0
            and not pods_of(cluster, namespace, "b")
        ),
        timeout=30,
        what="pods scaled to zero",
    )
    obj = get(cluster, namespace, "llmd", "b")
    assert obj["spec"]["replicas"] == 1
    assert obj["spec"]["suspend"] is False
    held = obj["status"]["cost"]
    assert held["runningAccelerators"] == 0
    assert held["projectedCost"] == held["cost"]

    # Held, nothing more is spent and nothing flaps: a few refreshes later, the same.
    reconciles = operator.metric("lamina_operator_reconcile_duration_seconds_count")
    wait_until(
        lambda: (
            operator.metric("lamina_operator_reconcile_duration_seconds_count") >= reconciles + 3
        ),
        timeout=30,
        what="three more reconciles",
    )
    assert get(cluster, namespace, "llmd", "b")["status"]["cost"]["cost"] == held["cost"]
    reasons = [e["reason"] for e in events_of(cluster, namespace, "b")]
    assert reasons.count("BudgetWarning") == 1
    assert reasons.count("BudgetExceeded") == 1
    assert reasons.count("OverBudget") <= 1
    for event in events_of(cluster, namespace, "b"):
        if event["reason"].startswith("Budget"):
            assert event["type"] == "Warning"
            assert event.get("count", 1) == 1

    # A higher budget lets it run again.
    raise_budget = {"spec": {"cost": {"monthlyBudget": 1e9}}}
    cluster.kubectl(
        "-n", namespace, "patch", "llmd", "b", "--type=merge", "-p", json.dumps(raise_budget)
    )
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "llmd/b", "--timeout=60s")
    obj = get(cluster, namespace, "llmd", "b")
    assert condition(obj, "BudgetExceeded")["status"] == "False"
    assert get(cluster, namespace, "deployment", "b")["spec"]["replicas"] == 1
    _, money, cost_now = metric_matches_status(cluster, namespace, "b", operator)
    assert money == pytest.approx(cost_now["cost"])
