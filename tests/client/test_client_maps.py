"""``Client.mapped_hidden_states``: a server's alignment map (``--map``) through the
client, over the fake server (sync and async twins)."""

from __future__ import annotations

import numpy as np
import pytest
from client.client_fake_server import FakeMap, FakeServer, Twin
from lamina import NotFound


def a_map(layers: list[int], pooling: str, output: int = 5, hidden: int = 8) -> FakeMap:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((len(layers) * hidden, output)).astype(np.float32)
    return FakeMap(layers, pooling, weight, rng.standard_normal(output).astype(np.float32))


PROMPTS = [f"prompt {i} with {'words ' * (i % 4)}" for i in range(30)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "safetensors"])
def test_mapped_vectors_come_back_in_prompt_order(
    twin: Twin, fake: FakeServer, binary: bool
) -> None:
    fake.maps["m"] = a_map([-2, 0], "mean")
    got = twin("mapped_hidden_states", PROMPTS, "m", binary=binary)
    assert got.shape == (30, 5)
    np.testing.assert_allclose(got, np.stack([fake.mapped(p, "m") for p in PROMPTS]), rtol=1e-6)
    sent = fake.hidden_state_requests()[0]
    assert b'"map":"m"' in sent.content.replace(b" ", b"")
    assert b'"layers"' not in sent.content  # the server takes the map's own


def test_a_map_fitted_per_token_gives_one_array_per_prompt(twin: Twin, fake: FakeServer) -> None:
    fake.maps["tokens"] = a_map([1], "all", output=3)
    got = twin("mapped_hidden_states", PROMPTS[:4], "tokens")
    assert [a.shape for a in got] == [(3, 3), (4, 3), (5, 3), (6, 3)]  # one per word
    np.testing.assert_allclose(got[2], fake.mapped(PROMPTS[2], "tokens"), rtol=1e-6)


def test_batches_fit_the_extraction_and_the_answer_under_the_byte_limit(
    twin: Twin, fake: FakeServer
) -> None:
    fake.maps["wide"] = a_map([-1, -2, -3], "last", output=40)  # answer wider than 3 × 8
    fake.max_response_bytes = 40 * 4 * 10  # ten answers' worth
    got = twin("mapped_hidden_states", PROMPTS, "wide")
    assert got.shape == (30, 40)
    assert fake.batches() == [10, 10, 10]  # none refused


def test_an_unknown_map_names_the_loaded_ones(twin: Twin, fake: FakeServer) -> None:
    fake.maps["a"] = a_map([-2], "last")
    with pytest.raises(NotFound, match=r"no map 'b' on this server; loaded maps: a"):
        twin("mapped_hidden_states", PROMPTS, "b")
    # The client asked /health again (maps load at start: the server may be new), not /v1.
    assert fake.paths() == ["GET /health", "GET /health"]
