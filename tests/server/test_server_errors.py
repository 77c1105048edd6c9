"""Bad input gets the right status and a message that says what is wrong."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from server_helpers import Server

pytestmark = pytest.mark.vllm


def post(server: Server, body: Any = None, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(f"{server.url}/v1/hidden_states", content=content, timeout=60)
    return httpx.post(f"{server.url}/v1/hidden_states", json=body, timeout=60)


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["code"] == status
    return dict(err)


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range_names_valid_range(llama_server: Server, layer: int) -> None:
    err = error_of(post(llama_server, {"prompts": ["hi"], "layers": [layer]}), 422)
    assert f"layer {layer}" in err["message"]
    assert "-4..3" in err["message"]
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("prompts", "needle"),
    [
        ([""], "empty"),
        ([5], "prompts.0"),
        ([None], "prompts.0"),
        ([], "prompts"),
        ("just a string", "prompts"),
        ([[]], "prompts.0"),
    ],
)
def test_empty_or_non_string_prompts(llama_server: Server, prompts: Any, needle: str) -> None:
    err = error_of(post(llama_server, {"prompts": prompts}), 422)
    assert needle in err["message"]


def test_missing_prompts(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"layers": [0]}), 422)
    assert "prompts" in err["message"]
    assert "Field required" in err["message"]


def test_unknown_fields(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": ["hi"], "layerz": [0]}), 422)
    assert "layerz" in err["message"]
    assert "Extra inputs are not permitted" in err["message"]


@pytest.mark.parametrize("body", [b'{"prompts": ["hi"', b"not json", b"", b"[1, 2]"])
def test_malformed_json(llama_server: Server, body: bytes) -> None:
    err = error_of(post(llama_server, content=body), 422)
    assert "invalid request" in err["message"]


def test_bad_enums(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": ["hi"], "pooling": "max"}), 422)
    assert "pooling" in err["message"]
    err = error_of(post(llama_server, {"prompts": ["hi"], "dtype": "int8"}), 422)
    assert "dtype" in err["message"]


def test_layer_and_layers_together(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": ["hi"], "layer": 0, "layers": [1]}), 422)
    assert "either 'layer' or 'layers'" in err["message"]


def test_token_id_outside_vocabulary(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": [[1, 2, 99999]]}), 422)
    assert "99999" in err["message"]
    assert "vocabulary" in err["message"]


def test_too_many_prompts(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": ["hi"] * 65}), 413)
    assert "too many prompts: 65 > 64" in err["message"]


def test_too_many_tokens(llama_server: Server) -> None:
    # the test server allows 4000 prompt tokens per request
    prompts = [[3] * 200] * 21
    err = error_of(post(llama_server, {"prompts": prompts}), 413)
    assert "4000 prompt tokens" in err["message"]


def test_over_byte_budget(llama_server: Server) -> None:
    # 2 x 200 tokens x 4 layers x 256 x 4 B = 1.6 MB > the test server's 1 MiB
    body = {"prompts": [[3] * 200] * 2, "layers": [0, 1, 2, 3], "pooling": "all"}
    err = error_of(post(llama_server, body), 413)
    assert "1048576-byte limit" in err["message"]
    # the same request pooled, or in a 2-byte dtype, fits
    assert post(llama_server, {**body, "pooling": "mean"}).status_code == 200
    assert post(llama_server, {**body, "dtype": "bfloat16"}).status_code == 200


def test_prompt_longer_than_context(llama_server: Server) -> None:
    err = error_of(post(llama_server, {"prompts": [[3] * 300]}), 422)
    assert "300 tokens" in err["message"]
    assert "max_model_len=256" in err["message"]


def test_embeddings_errors(llama_server: Server) -> None:
    url = f"{llama_server.url}/v1/embeddings"
    r = httpx.post(url, json={"input": "hi", "dimensions": 3}, timeout=60)
    assert error_of(r, 422)["message"].startswith("dimensions=3")
    r = httpx.post(url, json={"input": "hi", "layer": 9}, timeout=60)
    assert "-4..3" in error_of(r, 422)["message"]
    r = httpx.post(url, json={"input": "hi", "colour": "red"}, timeout=60)
    assert "colour" in error_of(r, 422)["message"]
