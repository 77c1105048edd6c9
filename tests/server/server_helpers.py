"""Helpers of the server tests: running servers, the transformers reference.

Each vLLM server is started once (``python -m lamina_server`` as a subprocess on a
free port, ready when ``/readyz`` answers 200) and shared by every test that needs
it. The llama and gpt2 servers are launched together so their start-ups overlap.
"""

from __future__ import annotations

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
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        self.model.eval()
        blocks = getattr(getattr(self.model, "model", None), "layers", None)
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
            return rows[-1]
        if pooling == "mean":
            return rows.mean(axis=0)
        return rows
