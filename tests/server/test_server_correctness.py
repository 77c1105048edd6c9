"""Hidden states over HTTP equal transformers' on the same weights (float32, 1e-4)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
from server.server_helpers import Reference, Server

pytestmark = pytest.mark.vllm
TOL = 1e-4
ARCH_LAYERS = 4  # tiny models: layers 0 (first), 1 (middle), -2, -1 (before final norm)
LAYERS = [0, 1, -2, -1]

PROMPTS = [
    "What is AI?",
    "The residual stream of a transformer carries information between layers.",
    "Hi",
    "Kubernetes runs containers in pods; an operator reconciles custom resources. " * 2,
]


def post(server: Server, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/hidden_states", json=body, timeout=120, **kw)


def check(ref: Reference, prompt: str | list[int], layer: int, pooling: str, got: Any) -> None:
    ids = ref.tokens(prompt) if isinstance(prompt, str) else prompt
    want = ref.expected(ids, layer, pooling)
    got_arr = np.asarray(got, dtype=np.float32)
    assert got_arr.shape == want.shape, (layer, pooling)
    err = float(np.abs(got_arr - want).max())
    assert err <= TOL, f"layer {layer} pooling {pooling}: max abs err {err}"


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_matches_transformers_mixed_lengths(server: Server, reference: Any, pooling: str) -> None:
    ref: Reference = reference(server.name)
    r = post(server, {"prompts": PROMPTS, "layers": LAYERS, "pooling": pooling})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resolved_layers"] == [0, 1, 2, 3]
    assert body["prompt_tokens"] == [len(ref.tokens(p)) for p in PROMPTS]
    assert body["metadata"]["num_prompts"] == len(PROMPTS)
    assert body["metadata"]["hidden_size"] == 256
    for i, prompt in enumerate(PROMPTS):
        entry = body["data"][i]
        assert entry["prompt_tokens"] == body["prompt_tokens"][i]
        for layer_state in entry["layers"]:
            check(ref, prompt, layer_state["layer"], pooling, layer_state["hidden_state"])
        # the legacy field holds the first requested layer
        check(ref, prompt, LAYERS[0], pooling, body["hidden_states"][i])


def test_legacy_request_shape(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    body: dict[str, Any] = {
        "prompts": ["What is AI?", "Hi"],
        "layer": -2,
        "max_tokens": 1,
        "temperature": 0.0,
        "return_hidden_states": True,
    }
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["layer"] == -2
    assert set(out["metadata"]) >= {"num_prompts", "hidden_size", "dtype"}
    assert len(out["hidden_states"]) == 2
    assert len(out["hidden_states"][0]) == 256
    for prompt, vec in zip(body["prompts"], out["hidden_states"], strict=True):
        check(ref, prompt, -2, "last", vec)


def test_token_id_prompts_equal_text(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    ids = ref.tokens(PROMPTS[1])
    r = post(server, {"prompts": [ids], "layers": [1], "pooling": "mean"})
    assert r.status_code == 200, r.text
    check(ref, ids, 1, "mean", r.json()["hidden_states"][0])


def test_32_concurrent_requests(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    prompts = [f"Question number {i}: what is {i} + {i * 7}? " * (1 + i % 5) for i in range(32)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/v1/hidden_states",
                        json={"prompts": [p], "layers": [1, -1], "pooling": "mean"},
                    )
                    for p in prompts
                ]
            )

    responses = asyncio.run(run())
    for prompt, r in zip(prompts, responses, strict=True):
        assert r.status_code == 200, r.text
        for st in r.json()["data"][0]["layers"]:
            check(ref, prompt, st["layer"], "mean", st["hidden_state"])


def test_prompt_longer_than_chunked_prefill_budget(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    prompt = "Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols. " * 9
    assert 150 < len(ref.tokens(prompt)) < 255  # budget per step is 64 tokens
    r = post(server, {"prompts": [prompt], "layers": LAYERS, "pooling": "all"})
    assert r.status_code == 200, r.text
    for st in r.json()["data"][0]["layers"]:
        check(ref, prompt, st["layer"], "all", st["hidden_state"])


def test_shared_prefix_with_prefix_caching(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    prefix = "Once upon a time there was a small model with random weights. " * 4
    prompts = [prefix + "The end.", prefix + "And then?", prefix + "The end."]
    for prompt in prompts:  # sequential, so later ones find the prefix cached
        r = post(server, {"prompts": [prompt], "layers": [0, -1], "pooling": "all"})
        assert r.status_code == 200, r.text
        for st in r.json()["data"][0]["layers"]:
            check(ref, prompt, st["layer"], "all", st["hidden_state"])


def test_alongside_completions_under_load(server: Server, reference: Any) -> None:
    ref: Reference = reference(server.name)
    prompts = [f"Hidden states under load, request {i}." for i in range(8)]

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            completions = [
                client.post(
                    "/v1/completions",
                    json={"model": str(server.model), "prompt": f"Story {i}:", "max_tokens": 24},
                )
                for i in range(8)
            ]
            hidden = [
                client.post(
                    "/v1/hidden_states", json={"prompts": [p], "layers": [-2], "pooling": "last"}
                )
                for p in prompts
            ]
            done = await asyncio.gather(*completions, *hidden)
            return list(done[:8]), list(done[8:])

    completions, hidden = asyncio.run(run())
    for r in completions:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
    for prompt, r in zip(prompts, hidden, strict=True):
        assert r.status_code == 200, r.text
        check(ref, prompt, -2, "last", r.json()["hidden_states"][0])


def _bf16_round(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_base64_and_dtypes(llama_server: Server, reference: Any, dtype: str) -> None:
    ref: Reference = reference("llama")
    prompt = PROMPTS[1]
    r = post(
        llama_server,
        {"prompts": [prompt], "layers": [-2], "encoding_format": "base64", "dtype": dtype},
    )
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["hidden_states"][0])
    want = ref.expected(ref.tokens(prompt), -2, "last")
    if dtype == "float32":
        got = np.frombuffer(raw, "<f4")
        assert np.abs(got - want).max() <= TOL
    elif dtype == "float16":
        got = np.frombuffer(raw, "<f2").astype(np.float32)
        assert np.abs(got - want.astype(np.float16).astype(np.float32)).max() <= 1e-3
    else:
        got = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        assert np.abs(got - _bf16_round(want)).max() <= 1e-2
    # float encoding of the same dtype carries the same rounded values
    r2 = post(llama_server, {"prompts": [prompt], "layers": [-2], "dtype": dtype})
    np.testing.assert_array_equal(np.asarray(r2.json()["hidden_states"][0], np.float32), got)


def test_octet_stream_is_safetensors(llama_server: Server, reference: Any) -> None:
    from safetensors.numpy import load

    ref: Reference = reference("llama")
    prompts = PROMPTS[:2]
    r = post(
        llama_server,
        {"prompts": prompts, "layers": [0, -2], "pooling": "mean"},
        headers={"Accept": "application/octet-stream"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    tensors = load(r.content)
    assert set(tensors) == {"layer.0", "layer.-2"}
    assert tensors["layer.0"].shape == (2, 256)
    for i, p in enumerate(prompts):
        check(ref, p, -2, "mean", tensors["layer.-2"][i])
    header_len = int.from_bytes(r.content[:8], "little")
    meta = json.loads(r.content[8 : 8 + header_len])["__metadata__"]
    assert json.loads(meta["prompt_tokens"]) == [len(ref.tokens(p)) for p in prompts]

    r = post(
        llama_server,
        {"prompts": prompts, "layers": [1], "pooling": "all"},
        headers={"Accept": "application/octet-stream"},
    )
    tensors = load(r.content)
    for i, p in enumerate(prompts):
        check(ref, p, 1, "all", tensors[f"prompt.{i}.layer.1"])


def test_completions_output_hidden_states(llama_server: Server, reference: Any) -> None:
    ref: Reference = reference("llama")
    prompts = ["What is AI?", "Hi there"]
    url = f"{llama_server.url}/v1/completions"
    base = {"model": str(llama_server.model), "prompt": prompts, "max_tokens": 4}
    r = httpx.post(
        url,
        json={**base, "output_hidden_states": {"layers": [0, -1], "pooling": "mean"}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["choices"]) == 2
    hs = out["hidden_states"]
    assert hs["layers"] == [0, -1]
    for i, prompt in enumerate(prompts):
        for st in hs["data"][i]["layers"]:
            check(ref, prompt, st["layer"], "mean", st["hidden_state"])
    # true: the server defaults (layer -2, last token)
    r = httpx.post(url, json={**base, "output_hidden_states": True}, timeout=120)
    assert r.status_code == 200, r.text
    check(ref, prompts[1], -2, "last", r.json()["hidden_states"]["hidden_states"][1])
    # without the field the answer is vLLM's own
    assert "hidden_states" not in httpx.post(url, json=base, timeout=120).json()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"stream": True, "output_hidden_states": True}, "stream"),
        ({"output_hidden_states": {"layers": [9]}}, "-4..3"),
        ({"output_hidden_states": {"colour": 1}}, "output_hidden_states must be"),
    ],
)
def test_completions_output_hidden_states_errors(
    llama_server: Server, extra: dict[str, Any], needle: str
) -> None:
    body = {"model": str(llama_server.model), "prompt": "hi", "max_tokens": 2, **extra}
    r = httpx.post(f"{llama_server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_chat_completions_output_hidden_states(llama_server: Server, reference: Any) -> None:
    ref: Reference = reference("llama")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is a residual stream?"},
    ]
    r = httpx.post(
        f"{llama_server.url}/v1/chat/completions",
        json={
            "model": str(llama_server.model),
            "messages": messages,
            "max_tokens": 3,
            "output_hidden_states": {"layers": [1], "pooling": "all"},
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    text = ref.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(ref.tokenizer(text, add_special_tokens=False)["input_ids"])
    hs = out["hidden_states"]
    assert hs["prompt_tokens"] == [len(ids)] == [out["usage"]["prompt_tokens"]]
    check(ref, ids, 1, "all", hs["hidden_states"][0])
    bad = httpx.post(
        f"{llama_server.url}/v1/chat/completions",
        json={
            "model": str(llama_server.model),
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
            "output_hidden_states": True,
        },
        timeout=60,
    )
    assert bad.status_code == 422
    assert "text 'content' only" in bad.json()["error"]["message"]
