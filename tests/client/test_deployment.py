"""``for_deployment`` with a fake ``kubectl`` (a script) in front of the fake server.

The fake kubectl answers ``get llmd``/``get svc`` from JSON files and, for
``port-forward``, prints kubectl's "Forwarding from" line with the port of a real
local server running :class:`FakeServer`, then waits to be stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import lamina
import numpy as np
import pytest
from client.client_fake_server import FakeServer, serve
from lamina.cli import main

KUBECTL = f"""#!{sys.executable}
import json, os, pathlib, sys, time
state = pathlib.Path(os.environ["FAKE_KUBECTL_STATE"])
args = sys.argv[1:]
with open(state / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\\n")
if "--context" in args:
    i = args.index("--context")
    args = args[:i] + args[i + 2:]
if args[:1] == ["get"]:
    kind, name = args[1], args[2]
    path = state / f"{{kind}}.{{name}}.json"
    if not path.exists():
        sys.stderr.write(f'Error from server (NotFound): {{kind}} "{{name}}" not found\\n')
        sys.exit(1)
    print(path.read_text())
elif args[:1] == ["port-forward"]:
    if (state / "forward-fails").exists():
        sys.stderr.write((state / "forward-fails").read_text())
        sys.exit(1)
    (state / "forward.pid").write_text(str(os.getpid()))
    port = (state / "port").read_text()
    print(f"Forwarding from 127.0.0.1:{{port}} -> {{args[-1].split(':')[1]}}", flush=True)
    print(f"Forwarding from [::1]:{{port}} -> 8000", flush=True)
    while True:
        time.sleep(1)
else:
    sys.exit(f"fake kubectl: unexpected {{args}}")
"""

LLMD = {
    "metadata": {"name": "my-llm", "namespace": "team"},
    "status": {"endpoint": "http://my-llm.team.svc:8000"},
}
SVC = {
    "metadata": {"name": "my-llm"},
    "spec": {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}]},
}


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeServer) -> Iterator[Path]:
    """A directory with the fake kubectl (put first on PATH) and its state files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(KUBECTL)
    kubectl.chmod(0o755)
    (tmp_path / "llmd.my-llm.json").write_text(json.dumps(LLMD))
    (tmp_path / "svc.my-llm.json").write_text(json.dumps(SVC))
    monkeypatch.setenv("FAKE_KUBECTL_STATE", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("LAMINA_URL", raising=False)
    with serve(fake) as port:
        (tmp_path / "port").write_text(str(port))
        yield tmp_path


def calls(kube: Path) -> list[list[str]]:
    return [json.loads(line) for line in (kube / "calls.log").read_text().splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_outside_the_cluster_it_port_forwards_and_close_stops_it(
    kube: Path, fake: FakeServer
) -> None:
    with lamina.for_deployment("my-llm", "team", context="dev") as client:
        got = client.hidden_states(["a b", "c"], -1)
        np.testing.assert_array_equal(got[1], fake.expected("c", -1, "last"))
        pid = int((kube / "forward.pid").read_text())
        assert alive(pid)
        assert client.base_url.startswith("http://127.0.0.1:")
    assert not alive(pid)
    assert calls(kube) == [
        ["--context", "dev", "get", "llmd", "my-llm", "-n", "team", "-o", "json"],
        ["--context", "dev", "get", "svc", "my-llm", "-n", "team", "-o", "json"],
        ["--context", "dev", "port-forward", "-n", "team", "svc/my-llm", "0:8000"],
    ]


def test_the_async_twin_port_forwards_too(kube: Path, fake: FakeServer) -> None:
    async def run() -> np.ndarray:
        client = await lamina.async_for_deployment("my-llm", "team")
        async with client:
            got = await client.hidden_states(["q"], [-1, -2])
            assert isinstance(got, np.ndarray)  # not pooling="all": one array
            return got

    got = asyncio.run(run())
    assert got.shape == (1, 2, fake.hidden_size)
    assert not alive(int((kube / "forward.pid").read_text()))


def test_a_missing_deployment_is_not_found_with_a_hint(kube: Path) -> None:
    with pytest.raises(lamina.NotFound) as caught:
        lamina.for_deployment("nope", "team")
    assert "no LLMDeployment 'nope' in namespace 'team'" in str(caught.value)
    assert "kubectl get llmd -n team" in str(caught.value)


def test_a_failing_port_forward_reports_kubectls_stderr(kube: Path) -> None:
    (kube / "forward-fails").write_text("error: unable to forward port: no ready pods\n")
    with pytest.raises(lamina.ConnectionFailed) as caught:
        lamina.for_deployment("my-llm", "team")
    assert "unable to forward port: no ready pods" in str(caught.value)


def test_missing_kubectl_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(lamina.ConnectionFailed) as caught:
        lamina.for_deployment("my-llm", kubectl="no-such-kubectl-here")
    assert "kubectl not found" in str(caught.value)
    assert "--url" in str(caught.value)


def test_inside_the_cluster_it_uses_the_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with lamina.for_deployment("my-llm", "team", kubectl="no-such-kubectl-here") as c:
        assert c.base_url == "http://my-llm.team.svc:8000"
    with lamina.for_deployment("my-llm", "team", port=9000) as c:
        assert c.base_url == "http://my-llm.team.svc:9000"


def test_the_cli_reaches_a_deployment(
    kube: Path, fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h.npy"
    code = main(["hidden-states", "-d", "my-llm", "-n", "team", "hello", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out)[0], fake.expected("hello", -2, "last"))
    assert not alive(int((kube / "forward.pid").read_text()))


def test_the_cli_reports_a_missing_deployment(
    kube: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hidden-states", "-d", "nope", "-n", "team", "x", "-o", "h.npy"]) == 1
    assert "kubectl get llmd -n team" in capsys.readouterr().err
