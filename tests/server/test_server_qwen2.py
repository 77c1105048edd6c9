"""Truthful defaults on an architecture the other tests do not use: a random Qwen2
(attention biases) saved in float32, served with no ``--dtype``, gives transformers'
hidden states (vLLM's own ``auto`` would compute it in bfloat16 on CPU, 4.5e-3 away),
and every answer says which dtype the engine computed in."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from server.server_helpers import SERVER_FLAGS, Reference, Server
from tiny_model import TinyModelSpec, ensure_tiny_model

pytestmark = pytest.mark.vllm
TOL = 1e-4
PROMPTS = ["What is AI?", "Hidden states of a language model can be probed, steered and aligned."]


def without_dtype(flags: list[str]) -> list[str]:
    i = flags.index("--dtype")
    return flags[:i] + flags[i + 2 :]


@pytest.fixture(scope="module")
def qwen2() -> Iterator[tuple[Server, Reference]]:
    path = ensure_tiny_model(TinyModelSpec(arch="qwen2"))
    server = Server("qwen2", path, without_dtype(list(SERVER_FLAGS))).start()
    try:
        reference = Reference(path)
        yield server.wait_ready(), reference
    finally:
        server.stop()


def test_default_dtype_is_the_checkpoints_and_matches_transformers(
    qwen2: tuple[Server, Reference],
) -> None:
    server, ref = qwen2
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["dtype"] == "float32"
    r = httpx.post(
        f"{server.url}/v1/hidden_states",
        json={"prompts": PROMPTS, "layers": [0, 1, -2, -1], "pooling": "all"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["engine_dtype"] == "float32"
    assert r.headers["x-lamina-engine-dtype"] == "float32"
    for i, prompt in enumerate(PROMPTS):
        for state in body["data"][i]["layers"]:
            want = ref.expected(ref.tokens(prompt), state["layer"], "all")
            err = float(np.abs(np.asarray(state["hidden_state"], np.float32) - want).max())
            assert err <= TOL, f"prompt {i} layer {state['layer']}: max abs err {err}"


def test_binary_answer_names_the_engine_dtype(qwen2: tuple[Server, Reference]) -> None:
    server, _ = qwen2
    r = httpx.post(
        f"{server.url}/v1/hidden_states",
        json={"prompts": PROMPTS, "dtype": "bfloat16"},
        headers={"Accept": "application/octet-stream"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    (size,) = struct.unpack("<Q", r.content[:8])
    header = json.loads(r.content[8 : 8 + size])
    # The answer's values are bfloat16 as asked; the engine computed in float32.
    assert header["layer.-2"]["dtype"] == "BF16"
    assert header["__metadata__"]["engine_dtype"] == "float32"
