"""The costliest inputs the limits let through, eight at a time: every probe answers
within 100 ms meanwhile (issue 15).

Each input is as big as the default limits allow (or just over): the most text, the
most JSON values, the deepest JSON, the longest token-id lists, the most chat items,
on every POST route. Probes run in their own process, one after the other, each on a
fresh connection as the kubelet makes them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from lamina_server.config import LaminaSettings
from server.server_helpers import HealthPoller, Server

pytestmark = pytest.mark.vllm

LIMITS = LaminaSettings()  # the test server runs with the default body and JSON limits
PROBE_BUDGET_SECONDS = 0.1
CONCURRENCY = 8
ROUNDS = 2


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def worst_inputs() -> list[tuple[str, bytes]]:
    """(route, body): each as costly as the limits allow, or just over them."""
    values = LIMITS.max_json_values
    text = ("The quick brown fox jumps over the lazy dog. " * 30000)[: LIMITS.max_prompt_chars]
    ids = [7] * (LIMITS.max_json_array_items - 10)
    deep = "[" * (LIMITS.max_json_depth - 2) + "]" * (LIMITS.max_json_depth - 2)
    chat_items = LIMITS.max_chat_items
    escaped = '"' + "\\u00e9" * ((LIMITS.max_body_bytes - 200) // 6) + '"'
    return [
        # the most text, as hidden-state and embedding prompts, a completion, a chat
        ("/v1/hidden_states", _body({"prompts": [text]})),
        ("/v1/embeddings", _body({"input": [text[: len(text) // 64]] * 64})),
        ("/v1/completions", _body({"prompt": text, "max_tokens": 1})),
        ("/v1/completions", _body({"prompt": text, "output_hidden_states": True})),
        ("/v1/chat/completions", _body({"messages": [{"role": "user", "content": text}]})),
        (
            "/v1/chat/completions",
            _body({"messages": [{"role": "user", "content": text}], "output_hidden_states": True}),
        ),
        # the most bytes: one escaped string near the body limit
        ("/v1/completions", b'{"max_tokens": 1, "prompt": ' + escaped.encode() + b"}"),
        # the longest token-id lists: checked id by id, and in chat content
        ("/v1/hidden_states", _body({"prompts": [ids]})),
        ("/v1/hidden_states", _body({"prompts": [[5] * 1000] * 64})),
        ("/v1/completions", _body({"prompt": ids, "max_tokens": 1})),
        ("/v1/chat/completions", _body({"messages": [{"role": "user", "content": ids}]})),
        # the most JSON values, in vLLM's costliest fields and in ignored ones
        ("/v1/completions", _body({"prompt": "a", "x": [[]] * (values // 2 - 10)})),
        (
            "/v1/completions",
            _body({"prompt": "a", "logit_bias": {str(i): 1 for i in range(values // 2 - 10)}}),
        ),
        ("/v1/completions", _body({"prompt": "a", "stop": ["ab"] * (values - 10)})),
        ("/v1/hidden_states", _body({"prompts": [[]] * (values - 10)})),
        # the most chat items, in shapes vLLM validates item by item
        (
            "/v1/chat/completions",
            _body({"messages": [{"role": "user", "content": "a"}] * chat_items}),
        ),
        (
            "/v1/chat/completions",
            _body(
                {
                    "messages": [{"role": "zz", "content": [{"type": "x", "y": [1]}], "name": 5}]
                    * (chat_items // 2)
                }
            ),
        ),
        # the deepest JSON, and one level deeper
        ("/v1/completions", b'{"prompt": "a", "max_tokens": 1, "x": ' + deep.encode() + b"}"),
        ("/v1/hidden_states", b'{"prompts": ["a"], "x": [[' + deep.encode() + b"]]}"),
    ]


async def send_all(server: Server, inputs: list[tuple[str, bytes]]) -> list[int]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def send(route: str, body: bytes) -> int:
            async with gate:
                headers = {"content-type": "application/json"}
                return (await client.post(route, content=body, headers=headers)).status_code

        return await asyncio.gather(*(send(route, body) for route, body in inputs))


def test_probes_answer_within_100ms_under_the_costliest_inputs(llama_server: Server) -> None:
    inputs = worst_inputs()
    # Each route's first request imports and builds what it needs, once per process.
    asyncio.run(send_all(llama_server, inputs))
    with HealthPoller(llama_server) as poller:
        statuses = asyncio.run(send_all(llama_server, inputs * ROUNDS))
    print(f"\n{len(statuses)} costly requests, {CONCURRENCY} at a time; {poller.summary()}")
    assert all(s < 500 for s in statuses), statuses
    assert poller.answers
    slow = [a for a in poller.answers if a.status != 200 or a.seconds > PROBE_BUDGET_SECONDS]
    assert not slow, f"{len(slow)} probes slow or failed: {slow[:5]}; {poller.summary()}"
