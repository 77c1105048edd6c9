"""The Python client (client/, `import lamina`) against a real server: the arrays it
returns are the server's own answers (hence transformers'), whatever batching,
transport or splitting it chose to get them."""

from __future__ import annotations

from typing import Any

import httpx
import lamina
import numpy as np
import pytest
from server.server_helpers import Reference, Server, array

pytestmark = pytest.mark.vllm
TOL = 1e-4  # against transformers, float32


def prompts(n: int) -> list[str]:
    return [f"Prompt number {i}: " + "tokens " * (i % 7) for i in range(n)]


def test_more_prompts_than_one_request_takes_come_back_in_order(
    llama_server: Server, reference: Any
) -> None:
    ref: Reference = reference("llama")
    many = prompts(70)  # the server takes 64 per request
    with lamina.Client(llama_server.url) as client:
        assert client.health()["limits"]["max_prompts_per_request"] == 64
        got = array(client.hidden_states(many, layers=[-2, 0], pooling="mean"))
    assert got.shape == (70, 2, 256)
    for i in (0, 33, 64, 69):
        ids = ref.tokens(many[i])
        for j, layer in enumerate((-2, 0)):
            err = float(np.abs(got[i, j] - ref.expected(ids, layer, "mean")).max())
            assert err <= TOL, (i, layer, err)


def test_an_answer_over_the_servers_byte_limit_is_split_and_the_binary_one_equals_json(
    llama_server: Server,
) -> None:
    # pooling "all" of every layer for 40 prompts is over the test server's 1 MiB
    # answer limit: one request would be a 413.
    many = prompts(40)
    body = {"prompts": many, "layers": [0, 1, 2, 3], "pooling": "all"}
    r = httpx.post(f"{llama_server.url}/v1/hidden_states", json=body, timeout=60)
    assert r.status_code == 413
    with lamina.Client(llama_server.url) as client:
        split = client.hidden_states(many, layers=[0, 1, 2, 3], pooling="all")
        one = client.hidden_states(many[:1], layers=[0, 1, 2, 3], pooling="all", binary=False)
    assert len(split) == 40
    assert split[0].shape == one[0].shape
    np.testing.assert_array_equal(split[0], one[0])


async def test_the_async_client_gives_the_same_arrays(llama_server: Server) -> None:
    few = prompts(5)
    with lamina.Client(llama_server.url) as client:
        want = client.hidden_states(few, layers=-2)
    async with lamina.AsyncClient(llama_server.url) as client:
        got = await client.hidden_states(few, layers=-2)
    np.testing.assert_array_equal(got, want)


def test_bad_input_is_a_typed_error_with_the_servers_message(llama_server: Server) -> None:
    with lamina.Client(llama_server.url) as client, pytest.raises(lamina.BadRequest) as err:
        client.hidden_states(["Hi"], layers=99)
    assert err.value.status == 422
    assert "layer" in err.value.message
