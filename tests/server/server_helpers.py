"""Helpers of the server tests: running servers, the transformers reference.

Each vLLM server is started once (``python -m lamina_server`` as a subprocess on a
free port, ready when ``/readyz`` answers 200) and shared by every test that needs
it. The llama and gpt2 servers are launched together so their start-ups overlap.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

LOG_DIR = Path(os.environ.get("LAMINA_TEST_LOGS", "/tmp/lamina-server-tests"))
START_TIMEOUT = 300.0

# Small enough to start fast, big enough for real chunked prefill (budget 64).
SERVER_FLAGS = [
    "--dtype",
    "float32",
    "--max-model-len",
    "256",
    "--max-num-batched-tokens",
    "64",
    "--max-num-seqs",
    "64",
    "--enable-prefix-caching",
    "--max-tokens-per-request",
    "4000",
    "--max-response-bytes",
    "1MiB",
    "--",
    "--kv-cache-memory-bytes",
    str(256 << 20),
    "--disable-uvicorn-access-log",
]


def array(result: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """A client answer that is one array (pooled), not one per prompt."""
    assert isinstance(result, np.ndarray), type(result)
    return result


def per_prompt(result: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """A client answer that is one array per prompt (pooling "all")."""
    assert isinstance(result, list), type(result)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_TARGET_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("LAMINA_API_KEY", None)
    tree = str(Path(__file__).resolve().parents[2] / "server")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    return env


@dataclass
class Server:
    """A ``python -m lamina_server`` subprocess."""

    name: str
    model: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}-{self.port}.log"
        cmd = [sys.executable, "-m", "lamina_server", "--model", str(self.model)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**server_env(), **self.env}
            )
        return self

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Reference:
    """transformers' hidden states on the same weights, in Lamina's layer indexing.

    Layer i is HF ``hidden_states[i + 1]``, except the last layer, whose HF state is
    after the final norm: there the last decoder block's own output (a forward hook)
    is the reference.
    """

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # Any: transformers types its models' submodules (and eval()) loosely.
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        self.model = model
        model.eval()
        blocks: Any = getattr(getattr(self.model, "model", None), "layers", None)
        if blocks is None:
            blocks = self.model.transformer.h
        self.num_layers = len(blocks)
        self._last: Any = None

        def keep(_m: Any, _a: Any, out: Any) -> None:
            self._last = out[0] if isinstance(out, tuple) else out

        blocks[-1].register_forward_hook(keep)

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def states(self, ids: list[int]) -> list[np.ndarray]:
        """Per layer ``[tokens, hidden]`` float32."""
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]), output_hidden_states=True)
        layers = [h[0].numpy() for h in out.hidden_states[1:]]
        layers[-1] = self._last[0].numpy()
        return layers

    def expected(self, ids: list[int], layer: int, pooling: str) -> np.ndarray:
        rows = self.states(ids)[layer % self.num_layers]
        if pooling == "last":
            return np.asarray(rows[-1])
        if pooling == "mean":
            return np.asarray(rows.mean(axis=0))
        return rows


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (the API server, vLLM's engine
    core and its workers), from /proc."""
    pids, i = [pid], 0
    while i < len(pids):
        tasks = Path(f"/proc/{pids[i]}/task")
        i += 1
        for task in tasks.glob("*") if tasks.exists() else ():
            with contextlib.suppress(OSError):  # the task ended meanwhile
                pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


# Runs in its own process, so the test's own work (building and sending requests)
# never delays a probe: a fresh connection per probe, as the kubelet makes them, one
# after the other until a line arrives on stdin; then the answers as JSON.
_POLLER = r"""
import http.client, json, select, sys, time
host, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
answers, i = [], 0
while not select.select([sys.stdin], [], [], 0)[0]:
    path = paths[i % len(paths)]
    i += 1
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        status = response.status
        conn.close()
    except OSError as e:
        status = repr(e)
    answers.append([path, status, time.perf_counter() - started, started])
json.dump(answers, sys.stdout)
"""


@dataclass
class ProbeAnswer:
    path: str
    status: int | str  # the error, when there was no answer
    seconds: float
    started: float


class HealthPoller:
    """Probes ``/health``, ``/healthz`` and ``/readyz`` back to back while in use."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.answers: list[ProbeAnswer] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HealthPoller:
        args = ["127.0.0.1", str(self.server.port), "/health,/healthz,/readyz"]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _POLLER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(b"stop\n", timeout=60)
        self.answers = [ProbeAnswer(*a) for a in json.loads(out)]

    def summary(self) -> str:
        seconds = sorted(a.seconds for a in self.answers)
        if not seconds:
            return "no probes"
        p99 = seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]
        return (
            f"{len(seconds)} probes: max {seconds[-1] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"median {seconds[len(seconds) // 2] * 1000:.1f} ms"
        )
