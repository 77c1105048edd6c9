"""Preemption recomputes prompt rows; captures are stored by position, so pooled and
per-token states still equal transformers'. The server's KV cache holds 384 tokens;
long-running completions grow until the scheduler must preempt the newest requests
(hidden-state requests in the middle of a chunked prefill)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from metrics_text import scrape, total
from server.server_helpers import Reference, Server

pytestmark = pytest.mark.vllm

KV_TOKENS = 384
BYTES_PER_TOKEN = 2 * 4 * 2 * 64 * 4  # k+v x layers x kv heads x head dim x float32


@pytest.fixture(scope="module")
def tight_server(tiny_models: dict[str, Path]) -> Iterator[Server]:
    args = [
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--max-num-batched-tokens",
        "64",
        "--max-num-seqs",
        "8",
        "--no-enable-prefix-caching",
        "--kv-cache-memory-bytes",
        str(KV_TOKENS * BYTES_PER_TOKEN),
        "--disable-uvicorn-access-log",
    ]
    server = Server("llama-tight", tiny_models["llama"], args).start().wait_ready()
    yield server
    server.stop()


def _preemptions(server: Server) -> float:
    return total(scrape(server.url), "vllm:num_preemptions_total")


async def _generated(server: Server) -> float:
    text = await asyncio.to_thread(scrape, server.url)
    return total(text, "vllm:generation_tokens_total")


def test_states_survive_preemption(tight_server: Server, reference: Any) -> None:
    ref: Reference = reference("llama")
    prompts = [[(13 * i + 7 * j) % 500 + 3 for j in range(150)] for i in range(8)]
    before = _preemptions(tight_server)
    generated = total(scrape(tight_server.url), "vllm:generation_tokens_total")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=tight_server.url, timeout=300) as client:
            growing = [
                asyncio.ensure_future(
                    client.post(
                        "/v1/completions",
                        json={
                            "model": str(tight_server.model),
                            "prompt": [3 + i] * 16,
                            "max_tokens": 200,
                            "ignore_eos": True,
                        },
                    )
                )
                for i in range(4)
            ]
            async with asyncio.timeout(60):  # every completion running, and grown a bit
                while await _generated(tight_server) < generated + 20 * len(growing):
                    pass
            hidden = await asyncio.gather(
                *[
                    client.post(
                        "/v1/hidden_states",
                        json={"prompts": [p], "layers": [0, -1], "pooling": pooling},
                    )
                    for p in prompts
                    for pooling in ("mean", "all")
                ]
            )
            for r in await asyncio.gather(*growing):
                assert r.status_code == 200, r.text
            return list(hidden)

    responses = asyncio.run(run())
    assert _preemptions(tight_server) > before, "the scenario must actually preempt"
    for k, r in enumerate(responses):
        assert r.status_code == 200, r.text
        ids = prompts[k // 2]
        pooling = ("mean", "all")[k % 2]
        for st in r.json()["data"][0]["layers"]:
            want = ref.expected(ids, st["layer"], pooling)
            got = np.asarray(st["hidden_state"], np.float32)
            assert np.abs(got - want).max() <= 1e-4
