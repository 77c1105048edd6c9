"""Bad input gets the right status and a message that says what is wrong."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from metrics_text import scrape, total
from server.server_helpers import Server

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


# -- issue 15: what used to be a 500 is a 4xx, and changes nothing for others ----------


def canary(server: Server) -> Any:
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "hello", "max_tokens": 3, "temperature": 0, "output_hidden_states": True},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["text"], body["hidden_states"]["hidden_states"]


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        # (a) deep JSON with the field: a RecursionError in the completions wrapper
        (
            b'{"prompt": "hi", "output_hidden_states": true, "x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            413,
            "nested deeper than 64",
        ),
        # (b) a lone surrogate with the field: the tokenizer's TypeError
        (b'{"prompt": "a\\ud800b", "max_tokens": 1, "output_hidden_states": true}', 422, "JSON"),
        # (c) top_k beyond 64 bits: failed inside vLLM when handed to the engine
        (b'{"prompt": "hi", "max_tokens": 1, "top_k": 99999999999999999999}', 422, "64-bit"),
    ],
)
def test_former_500s_are_4xx_and_leave_the_server_unchanged(
    llama_server: Server, content: bytes, status: int, needle: str
) -> None:
    before = canary(llama_server)
    r = httpx.post(
        f"{llama_server.url}/v1/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert needle in error_of(r, status)["message"]
    assert canary(llama_server) == before


def test_405_and_vllm_400_come_in_the_envelope(llama_server: Server) -> None:
    r = httpx.get(f"{llama_server.url}/v1/completions", timeout=60)
    assert error_of(r, 405)["message"] == "/v1/completions takes POST, not GET"
    assert r.headers["allow"] == "OPTIONS, POST"
    r = httpx.post(
        f"{llama_server.url}/v1/completions",
        content=b'{"prompt":',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code in (400, 422)
    error_of(r, r.status_code)


def requests_total(server: Server, code: str) -> float:
    return total(scrape(server.url), "lamina_requests_total", code=code)


def test_client_disconnect_counted_as_499_not_500(llama_server: Server) -> None:
    import socket

    before_500 = requests_total(llama_server, "500")
    before_499 = requests_total(llama_server, "499")
    # Headers promise a body that never comes; the client then hangs up.
    with socket.create_connection(("127.0.0.1", llama_server.port)) as s:
        s.sendall(
            b"POST /v1/hidden_states HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
    deadline = time.monotonic() + 30
    while requests_total(llama_server, "499") == before_499:
        assert time.monotonic() < deadline, llama_server.log_tail()
    assert requests_total(llama_server, "499") == before_499 + 1
    assert requests_total(llama_server, "500") == before_500
    assert "Traceback" not in llama_server.log_tail(20)
