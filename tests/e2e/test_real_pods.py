"""End to end on the real node, the way a user runs Lamina:

helm install (the operator as a real pod from its image) → kubectl apply of
examples/tiny-cpu.yaml (only the model, its volume, two replicas and an API key
changed) → the operator starts real server pods (the CPU image, vLLM on CPU) under
Pod Security `restricted` → requests through the Service's ClusterIP from this host
and from another pod. Then what a user lives through: a rolling update and a deleted
pod under load (no request lost), a crashed server (restarted, status shows it).

The weights reach the pods on a local PersistentVolume of the node, at
/cache/models/tiny-llama (spec.modelCache.persistentVolumeClaim).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from e2e.real_node import (
    NODE,
    NODE_SH,
    Load,
    ModelVolume,
    condition,
    create_restricted_namespace,
    image_ref,
    is_ready,
    load_images,
    server_pods,
    service_url,
    wait_for,
)
from kube_cluster import REPO, Cluster
from server.server_helpers import Reference
from tiny_model import TinyModelSpec, ensure_tiny_model

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAME = "tiny-cpu"  # examples/tiny-cpu.yaml
SERVED = "tiny-llama"
KEY = "e2e-" + secrets.token_hex(8)
PROMPTS = ["What is AI?", "Kubernetes runs containers in pods.", "Hi"]
# vLLM on CPU, two pods on 2 cores: starting is the slow part.
START_TIMEOUT = 900


@dataclass(frozen=True)
class Served:
    cluster: Cluster
    namespace: str
    url: str
    model: Path
    volume: ModelVolume

    def get_llmd(self) -> dict[str, Any]:
        llmd: dict[str, Any] = self.cluster.get_json("-n", self.namespace, "get", "llmd", NAME)
        return llmd

    def pods(self) -> list[dict[str, Any]]:
        return server_pods(self.cluster, self.namespace, NAME)

    def all_ready(self, count: int) -> bool:
        pods = [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]
        return len(pods) == count and all(is_ready(p) for p in pods)


def the_example(model_path: str) -> dict[str, Any]:
    """examples/tiny-cpu.yaml as a user would adapt it to this cluster."""
    llmd: dict[str, Any] = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
    spec = llmd["spec"]
    spec["model"]["name"] = model_path
    spec["model"]["servedName"] = SERVED
    spec["modelCache"] = {"persistentVolumeClaim": "models"}
    spec["replicas"] = 2
    spec["secrets"] = {"apiKey": {"name": "lamina-api-key", "key": "key"}}
    return llmd


@pytest.fixture(scope="module")
def served(cluster: Cluster) -> Iterator[Served]:
    load_images("operator", "server-cpu")
    # Room for the example's maxModelLen (2048).
    model = ensure_tiny_model(TinyModelSpec(arch="llama", max_positions=2048))
    ns = f"e2e-{secrets.token_hex(3)}"
    create_restricted_namespace(cluster, ns)
    volume = ModelVolume.create(cluster, ns, {SERVED: model})
    try:
        cluster.helm(
            "install", "lamina", str(REPO / "charts" / "lamina"), "--namespace", ns,
            "--set", "logFormat=plain", "--wait", "--timeout", "5m", "--force-conflicts",
        )  # fmt: skip
        cluster.kubectl(
            "-n", ns, "create", "secret", "generic", "lamina-api-key", f"--from-literal=key={KEY}"
        )  # fmt: skip
        cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(the_example(
            f"/cache/models/{SERVED}"
        )))  # fmt: skip
        cluster.kubectl(
            "-n", ns, "wait", "--for=condition=Ready", f"llmd/{NAME}",
            f"--timeout={START_TIMEOUT}s", timeout=START_TIMEOUT + 30,
        )  # fmt: skip
        yield Served(cluster, ns, service_url(cluster, ns, NAME), model, volume)
    finally:
        for what in ("llmd", "pods", "events"):
            print(cluster.kubectl("-n", ns, "get", what, "-o", "wide", check=False).stdout)
        # The operator removes its finalizer; then the chart goes, then the namespace.
        cluster.kubectl("-n", ns, "delete", "llmd", "--all", "--timeout=120s", check=False)
        cluster.helm("uninstall", "lamina", "-n", ns, "--wait", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        volume.delete()


def _post(url: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=body, headers=headers, timeout=120)


def test_the_operator_and_the_servers_run_as_real_pods_under_restricted(served: Served) -> None:
    cluster, ns = served.cluster, served.namespace
    operator = cluster.get_json("-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=lamina")
    (op,) = operator["items"]
    assert op["spec"]["nodeName"] == NODE
    assert is_ready(op)
    assert op["status"]["containerStatuses"][0]["image"] == image_ref("operator")
    pods = served.pods()
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE
        assert is_ready(pod), "Ready comes from the real /readyz probe"
        (status,) = pod["status"]["containerStatuses"]
        assert status["image"] == image_ref("server-cpu")
        assert status["state"].get("running")
    labels = cluster.get_json("get", "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # What `kubectl get llmd` shows.
    table = cluster.kubectl("-n", ns, "get", "llmd", NAME).stdout
    assert "2/2" in table
    assert "AllReplicasReady" in table
    assert condition(served.get_llmd(), "Ready")["status"] == "True"


def test_hidden_states_through_the_service_equal_transformers(served: Served) -> None:
    ref = Reference(served.model)
    body = {"prompts": PROMPTS, "layers": [-2, 0, -1], "pooling": "mean"}
    r = _post(f"{served.url}/v1/hidden_states", body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == SERVED
    worst = 0.0
    for item, prompt in zip(data["data"], PROMPTS, strict=True):
        ids = ref.tokens(prompt)
        assert item["prompt_tokens"] == len(ids)
        for layer in item["layers"]:
            got = np.asarray(layer["hidden_state"], dtype=np.float32)
            want = ref.expected(ids, layer["layer"], "mean")
            worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-4, f"max abs error {worst:.2e} vs transformers (float32)"


def test_another_pod_reaches_the_service(served: Served) -> None:
    """A client pod (itself under `restricted`) calls the Service's ClusterIP."""
    cluster, ns = served.cluster, served.namespace
    script = (
        "import json, sys, urllib.request\n"
        f"req = urllib.request.Request({served.url + '/v1/hidden_states'!r}, method='POST',\n"
        f"    data=json.dumps({{'prompts': {PROMPTS!r}, 'layer': -2}}).encode(),\n"
        f"    headers={{'Content-Type': 'application/json', 'Authorization': 'Bearer {KEY}'}})\n"
        "print(urllib.request.urlopen(req, timeout=120).read().decode())\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": image_ref("server-cpu"),
                    "command": ["python3", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        lambda: (
            cluster.get_json("-n", ns, "get", "pod", "client")["status"].get("phase")
            in ("Succeeded", "Failed")
        ),
        timeout=180,
        what="the client pod to finish",
    )
    logs = cluster.kubectl("-n", ns, "logs", "client").stdout
    phase = cluster.get_json("-n", ns, "get", "pod", "client")["status"]["phase"]
    assert phase == "Succeeded", logs
    from_pod = json.loads(logs)
    from_host = _post(f"{served.url}/v1/hidden_states", {"prompts": PROMPTS, "layer": -2}).json()
    assert from_pod["prompt_tokens"] == from_host["prompt_tokens"]
    np.testing.assert_allclose(from_pod["hidden_states"], from_host["hidden_states"], atol=1e-5)


def test_api_key_from_a_secret_guards_the_service(served: Served) -> None:
    body = {"prompts": ["Hi"]}
    assert _post(f"{served.url}/v1/hidden_states", body, key=None).status_code == 401
    assert _post(f"{served.url}/v1/hidden_states", body, key="wrong").status_code == 401
    assert _post(f"{served.url}/v1/hidden_states", body).status_code == 200
    # Probes stay open (the kubelet has no key).
    assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200


def test_completions_and_the_openai_client_work_through_the_service(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0)
    done = client.completions.create(model=SERVED, prompt="What is AI?", max_tokens=8)
    assert done.usage is not None
    assert done.usage.completion_tokens > 0
    assert done.choices[0].text
    emb = client.embeddings.create(model=SERVED, input=["What is AI?", "Hi"])
    assert [len(e.embedding) for e in emb.data] == [256, 256]


def test_the_python_client_and_cli_find_the_deployment_and_port_forward(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lamina
    from lamina import cli

    # From this host (outside the cluster): kubectl finds the Service and port-forwards.
    monkeypatch.setenv("KUBECONFIG", str(served.cluster.kubeconfig))
    monkeypatch.setenv("PATH", f"{served.cluster.bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    direct = _post(f"{served.url}/v1/hidden_states", {"prompts": PROMPTS, "layers": [-2]})
    want = np.asarray([d["layers"][0]["hidden_state"] for d in direct.json()["data"]])
    with lamina.for_deployment(NAME, served.namespace, api_key=KEY) as client:
        assert client.base_url.startswith("http://127.0.0.1:")  # the port-forward
        got = client.hidden_states(PROMPTS, layers=-2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    out = tmp_path / "states.npy"
    monkeypatch.setenv("LAMINA_API_KEY", KEY)
    argv = ["hidden-states", "--deployment", NAME, "-n", served.namespace, "-o", str(out)]
    assert cli.main([*argv, *PROMPTS]) == 0
    np.testing.assert_allclose(np.load(out), want, rtol=0, atol=1e-6)


def test_lamina_run_starts_a_suspended_deployment_for_a_job_and_stops_it_after(
    served: Served, tmp_path: Path
) -> None:
    direct = _post(f"{served.url}/v1/hidden_states", {"prompts": PROMPTS, "layers": [-2]})
    want = np.asarray([d["layers"][0]["hidden_state"] for d in direct.json()["data"]])
    env = {
        **served.cluster.env,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("client", "server", "operator")),
        "LAMINA_API_KEY": KEY,
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)

    def lamina(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lamina", *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return proc

    lamina("down", NAME, "-n", served.namespace)
    wait_for(lambda: not served.pods(), 120, "server pods gone after lamina down")

    # The job reaches the servers at $LAMINA_URL (a port-forward: we are outside the
    # cluster); inside it, the Python API holds the deployment too.
    out = tmp_path / "states.npy"
    job = textwrap.dedent(f"""
        import os, lamina, numpy
        key = os.environ["LAMINA_API_KEY"]
        with lamina.Client(os.environ["LAMINA_URL"], api_key=key) as c:
            first = c.hidden_states({PROMPTS!r}, layers=-2)
        with lamina.running({NAME!r}, {served.namespace!r}, api_key=key) as c:
            second = c.hidden_states({PROMPTS!r}, layers=-2)
        numpy.save({str(out)!r}, numpy.stack([first, second]))
    """)
    run = lamina("run", NAME, "-n", served.namespace, "--", sys.executable, "-c", job)
    assert "pods ready" in run.stderr, "progress while it starts"
    first, second = np.load(out)
    np.testing.assert_allclose(first, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(second, want, rtol=0, atol=1e-6)
    llmd = served.get_llmd()
    assert llmd["spec"]["suspend"] is True, "put back as it was"
    assert "lamina.dev/leases" not in llmd["metadata"].get("annotations", {})
    wait_for(lambda: not served.pods(), 120, "server pods gone after the job")

    lamina("up", NAME, "-n", served.namespace, "--wait")
    wait_for(lambda: served.all_ready(2), START_TIMEOUT, "both pods ready again")
    assert _post(f"{served.url}/v1/hidden_states", {"prompts": PROMPTS}).status_code == 200


def _load(served: Served) -> Load:
    return Load(
        url=f"{served.url}/v1/hidden_states",
        body={"prompts": PROMPTS, "layers": [-2]},
        headers={"Authorization": f"Bearer {KEY}"},
        workers=4,
    )


def test_deleting_one_of_two_pods_loses_no_request(served: Served) -> None:
    cluster, ns = served.cluster, served.namespace
    victim = served.pods()[0]["metadata"]["name"]
    with _load(served).running() as load:
        load.wait_for_requests(20)
        # Graceful delete: preStop pause, endpoint removed, SIGTERM, drain.
        cluster.kubectl("-n", ns, "delete", "pod", victim, "--wait=true", timeout=180)
        load.wait_for_requests(20)
        wait_for(lambda: served.all_ready(2), timeout=START_TIMEOUT, what="2 Ready pods again")
        load.wait_for_requests(10)
    assert load.failures == [], f"failed requests: {load.failures} ({dict(load.outcomes)})"
    assert load.outcomes["200"] >= 50


def test_rolling_update_under_load_loses_no_request(served: Served) -> None:
    cluster, ns = served.cluster, served.namespace
    before = {p["metadata"]["name"] for p in served.pods()}
    with _load(served).running() as load:
        load.wait_for_requests(20)
        # A change of the pod template (a server flag): the Deployment rolls.
        patch = {"spec": {"hiddenStates": {"limits": {"maxQueueLength": 200}}}}
        cluster.kubectl("-n", ns, "patch", "llmd", NAME, "--type=merge", "-p", json.dumps(patch))

        def rolled() -> bool:
            names = {p["metadata"]["name"] for p in served.pods()}
            return not (names & before) and served.all_ready(2)

        wait_for(rolled, timeout=2 * START_TIMEOUT, what="both pods replaced and Ready")
        load.wait_for_requests(10)
    assert load.failures == [], f"failed requests: {load.failures} ({dict(load.outcomes)})"
    for pod in served.pods():
        assert "--max-queue-length=200" in pod["spec"]["containers"][0]["args"]
    assert condition(served.get_llmd(), "Ready")["status"] == "True"


def _container_pid(pod: dict[str, Any]) -> int:
    """The PID on this host of the pod's server process (its container's init)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix(
        "containerd://"
    )
    out = subprocess.run(
        [str(NODE_SH), "ctr", "tasks", "ls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no task for container {container_id}:\n{out}")


def test_a_killed_server_is_restarted_and_status_shows_the_interruption(served: Served) -> None:
    cluster, ns = served.cluster, served.namespace
    pod = served.pods()[0]
    name = pod["metadata"]["name"]
    ready_since = condition(served.get_llmd(), "Ready")["lastTransitionTime"]
    killed_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    subprocess.run(["kill", "-KILL", str(_container_pid(pod))], check=True)

    def restarted_and_ready() -> bool:
        p = cluster.get_json("-n", ns, "get", "pod", name)
        return bool(p["status"]["containerStatuses"][0]["restartCount"] >= 1 and is_ready(p))

    wait_for(restarted_and_ready, timeout=START_TIMEOUT, what=f"{name} restarted and Ready")
    wait_for(
        lambda: condition(served.get_llmd(), "Ready")["status"] == "True",
        timeout=60,
        what="the LLMDeployment Ready again",
    )
    ready = condition(served.get_llmd(), "Ready")
    assert ready["lastTransitionTime"] > ready_since, "Ready never went False"
    last = cluster.get_json("-n", ns, "get", "pod", name)["status"]["containerStatuses"][0]
    assert last["lastState"]["terminated"]["exitCode"] == 137
    events = cluster.get_json(
        "-n", ns, "get", "events", "--field-selector", f"involvedObject.name={NAME}"
    )["items"]
    warnings = [
        e["reason"]
        for e in events
        if e["type"] == "Warning"
        and e["involvedObject"]["kind"] == "LLMDeployment"
        and (e.get("lastTimestamp") or e.get("eventTime") or "") >= killed_at
    ]
    assert warnings, f"no Warning event on the LLMDeployment: {[e['reason'] for e in events]}"


def test_a_memory_limit_too_small_for_the_model_is_reported_in_status(served: Served) -> None:
    cluster, ns = served.cluster, served.namespace
    small = the_example(f"/cache/models/{SERVED}")
    small["metadata"]["name"] = "too-small"
    small["spec"]["replicas"] = 1
    small["spec"]["resources"]["requests"]["memory"] = "1Gi"
    small["spec"]["resources"]["limits"]["memory"] = "2Gi"
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(small))
    try:

        def degraded() -> dict[str, Any] | None:
            llmd = cluster.get_json("-n", ns, "get", "llmd", "too-small")
            cond = condition(llmd, "Degraded")
            return cond if cond.get("reason") == "ServerFailing" else None

        cond = wait_for(degraded, timeout=300, what="Degraded=ServerFailing on too-small")
        assert cond["status"] == "True"
        # The server's own words: what it had and what to give it.
        assert "memory limit 2.00 GiB" in cond["message"]
        assert "resources.limits.memory" in cond["message"]
        table = cluster.kubectl("-n", ns, "get", "llmd", "too-small").stdout
        assert "ServerFailing" in table
    finally:
        cluster.kubectl("-n", ns, "delete", "llmd", "too-small", "--timeout=120s", check=False)
