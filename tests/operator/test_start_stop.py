"""``lamina up / down / run`` against the real API server and the operator, on kwok's
GPU nodes (pods there become ready at once; the real node's test is in tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kube_cluster import REPO, Cluster, wait_until
from operator_harness import StartOperator, condition, get, llmd

pytestmark = pytest.mark.cluster

LEASES = "lamina.dev/leases"


def lamina_env(cluster: Cluster) -> dict[str, str]:
    tree = os.pathsep.join(str(REPO / part) for part in ("client", "server", "operator"))
    # The in-cluster path (Service URL, no port-forward): kwok's pods cannot be forwarded to.
    return {**cluster.env, "PYTHONPATH": tree, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}


def lamina(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina", *args],
        env=lamina_env(cluster),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def start_job(cluster: Cluster, ns: str, *args: str) -> subprocess.Popen[str]:
    """``lamina run m ARGS`` in the background, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "lamina", "run", "m", "-n", ns, *args],
        env=lamina_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def waiting_job(tmp_path: Path, name: str) -> list[str]:
    """A job that says it started (its environment, in a file) and ends when told."""
    started, end = tmp_path / f"{name}.started", tmp_path / f"{name}.end"
    code = (
        "import json, os, pathlib, time\n"
        f"pathlib.Path({str(started)!r}).write_text(json.dumps(dict(os.environ)))\n"
        f"while not pathlib.Path({str(end)!r}).exists(): time.sleep(0.1)\n"
    )
    return ["--lease", "30", "--", sys.executable, "-c", code]


def spec(cluster: Cluster, ns: str) -> dict[str, Any]:
    obj = get(cluster, ns, "llmd", "m")
    return {"suspend": obj["spec"]["suspend"], "replicas": obj["spec"]["replicas"]}


def suspended_with_no_pods(cluster: Cluster, ns: str) -> bool:
    obj = get(cluster, ns, "llmd", "m")
    return bool(obj["spec"]["suspend"]) and obj["status"].get("replicas") == 0


@pytest.fixture
def ns(cluster: Cluster, namespace: str, run_operator: StartOperator) -> str:
    """A suspended GPU LLMDeployment ``m`` of 2 replicas, with the operator running."""
    run_operator(namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=llmd("m", replicas=2, suspend=True))
    wait_until(
        lambda: (
            condition(get(cluster, namespace, "llmd", "m"), "Ready").get("reason") == "Suspended"
        ),
        timeout=60,
        what="llmd/m suspended",
    )
    return namespace


def test_up_waits_for_ready_pods_and_down_suspends(cluster: Cluster, ns: str) -> None:
    up = lamina(cluster, "up", "m", "-n", ns, "--wait")
    assert up.returncode == 0, up.stderr
    assert "llmd/m up and ready" in up.stdout
    assert "pods ready" in up.stderr, "progress while waiting"
    obj = get(cluster, ns, "llmd", "m")
    assert condition(obj, "Ready")["status"] == "True"
    assert obj["status"]["readyReplicas"] == 2, "the replicas it had before suspend"

    down = lamina(cluster, "down", "m", "-n", ns)
    assert down.returncode == 0, down.stderr
    wait_until(lambda: suspended_with_no_pods(cluster, ns), timeout=60, what="suspended")
    assert spec(cluster, ns) == {"suspend": True, "replicas": 2}


def test_two_jobs_share_it_and_the_last_one_puts_it_back(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    first = start_job(cluster, ns, *waiting_job(tmp_path, "a"))
    second = start_job(cluster, ns, *waiting_job(tmp_path, "b"))
    wait_until(
        lambda: (tmp_path / "a.started").exists() and (tmp_path / "b.started").exists(),
        timeout=120,
        what="both jobs started",
    )
    env = json.loads((tmp_path / "a.started").read_text())
    assert env["LAMINA_URL"] == f"http://m.{ns}.svc:8000"
    assert condition(get(cluster, ns, "llmd", "m"), "Ready")["status"] == "True"
    assert len(json.loads(get(cluster, ns, "llmd", "m")["metadata"]["annotations"][LEASES])) == 2

    refused = lamina(cluster, "down", "m", "-n", ns)
    assert refused.returncode == 2
    assert "held up by 2 running job(s)" in refused.stderr
    assert "--force" in refused.stderr

    (tmp_path / "a.end").touch()
    assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    assert spec(cluster, ns)["suspend"] is False, "the second job still runs"
    (tmp_path / "b.end").touch()
    assert second.wait(timeout=60) == 0
    assert spec(cluster, ns) == {"suspend": True, "replicas": 2}
    assert LEASES not in get(cluster, ns, "llmd", "m")["metadata"].get("annotations", {})
    wait_until(lambda: suspended_with_no_pods(cluster, ns), timeout=60, what="pods gone")


def test_a_failing_or_terminated_job_still_puts_it_back(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    failed = lamina(cluster, "run", "m", "-n", ns, "--", sys.executable, "-c", "exit(3)")
    assert failed.returncode == 3, failed.stderr
    assert spec(cluster, ns) == {"suspend": True, "replicas": 2}

    job = start_job(cluster, ns, *waiting_job(tmp_path, "t"))
    wait_until((tmp_path / "t.started").exists, timeout=120, what="job started")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == 128 + signal.SIGTERM
    assert spec(cluster, ns) == {"suspend": True, "replicas": 2}


def test_a_killed_job_stops_counting_when_its_lease_expires(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    job = start_job(cluster, ns, *waiting_job(tmp_path, "k")[:1], "10", "--", "sleep", "600")
    wait_until(
        lambda: (
            condition(get(cluster, ns, "llmd", "m"), "Ready").get("status") == "True"
            and LEASES in get(cluster, ns, "llmd", "m")["metadata"].get("annotations", {})
        ),
        timeout=120,
        what="job holding a ready deployment",
    )
    os.killpg(job.pid, signal.SIGKILL)  # no chance to put anything back
    job.wait()
    assert spec(cluster, ns)["suspend"] is False
    # Lease 10 s, renewed every ~3 s while alive: the operator acts within 10 s + slack.
    wait_until(lambda: spec(cluster, ns)["suspend"], timeout=40, what="operator put it back")
    assert spec(cluster, ns) == {"suspend": True, "replicas": 2}
    events = get(cluster, ns, "events", "--field-selector", "reason=LeasesExpired")
    assert events["items"], "the operator says what it did"
