"""Unit tests of the pure parts: config, layers, pooling, encoding, budgets, errors,
admission, and the HTTP layer over a fake engine (no vLLM)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from lamina_server.app import ServerState, create_app
from lamina_server.config import (
    LaminaSettings,
    apply_environment,
    engine_dtype,
    parse_command_line,
    parse_size,
)
from lamina_server.encoding import (
    encode_array,
    round_to_dtype,
    safetensors_bytes,
    to_bfloat16_bits,
    to_dtype_bytes,
)
from lamina_server.errors import STATUS_BY_TYPE, ErrorType, LaminaError, error_body
from lamina_server.layers import resolve_layer, resolve_layers
from lamina_server.limits import Admission, response_bytes
from lamina_server.protocol import HiddenStatesResponse
from metrics_text import total
from server.fake_engine import make_client
from server.reference_pooling import pool

# -- config ----------------------------------------------------------------------


def test_command_line_splits_ours_from_vllm() -> None:
    settings, rest = parse_command_line(
        [
            "--model",
            "m",
            "--default-layers",
            "-2,0",
            "--allowed-layers",
            "",
            "--default-pooling",
            "mean",
            "--max-response-bytes",
            "64MiB",
            "--max-num-seqs",
            "8",
            "--",
            "--kv-cache-memory-bytes",
            "1",
        ],
        {},
    )
    assert settings.default_layers == (-2, 0)
    assert settings.allowed_layers is None
    assert settings.default_pooling == "mean"
    assert settings.max_response_bytes == 64 * 2**20
    assert rest == ["--model", "m", "--max-num-seqs", "8", "--kv-cache-memory-bytes", "1"]


def test_environment_fills_flags_not_given() -> None:
    env = {
        "LAMINA_MODEL": "from-env",
        "LAMINA_MAX_MODEL_LEN": "2048",
        "LAMINA_ENABLE_PREFIX_CACHING": "false",
        "LAMINA_TRUST_REMOTE_CODE": "true",
        "LAMINA_MAX_QUEUE_LENGTH": "9",
        "LAMINA_PORT": "9000",
        "LAMINA_API_KEY": "s3cret",
    }
    settings, rest = parse_command_line(["--model", "from-flag"], env)
    assert settings.max_queue_length == 9
    assert settings.api_key == "s3cret"
    assert rest[:2] == ["--model", "from-flag"]
    assert "from-env" not in rest
    assert "--no-enable-prefix-caching" in rest
    assert "--trust-remote-code" in rest
    assert rest[rest.index("--max-model-len") + 1] == "2048"
    assert rest[rest.index("--port") + 1] == "9000"


def test_environment_flags_go_before_double_dash() -> None:
    out = apply_environment(["--", "--x"], {"LAMINA_DTYPE": "bfloat16"})
    assert out == ["--dtype", "bfloat16", "--", "--x"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("268435456", 268435456), ("256MiB", 256 * 2**20), ("1G", 10**9), ("4kib", 4096)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


# -- layers, pooling -------------------------------------------------------------


def test_resolve_layers() -> None:
    assert resolve_layers([0, -1, -2, 3], 4, None) == [0, 3, 2, 3]
    with pytest.raises(LaminaError, match=r"valid layers are -4\.\.3") as e:
        resolve_layer(4, 4)
    assert e.value.status == 422
    assert resolve_layers([-2], 4, [2]) == [2]
    with pytest.raises(LaminaError, match="not allowed"):
        resolve_layers([0], 4, [-2, -1])


def test_pool() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(pool(rows, "last"), rows[2])
    np.testing.assert_array_equal(pool(rows, "mean"), rows.mean(0))
    assert pool(rows, "all") is rows
    with pytest.raises(ValueError, match="non-empty"):
        pool(np.zeros((0, 4), np.float32), "last")


# -- encoding ----------------------------------------------------------------------


def test_bfloat16_matches_torch() -> None:
    import torch

    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bfloat16_bits(x), want)
    back = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(round_to_dtype(x, "bfloat16"), back)


def test_base64_round_trips() -> None:
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    got = np.frombuffer(base64.b64decode(str(encode_array(x, "base64", "float32"))), "<f4")
    np.testing.assert_array_equal(got, x)
    half = np.frombuffer(base64.b64decode(str(encode_array(x, "base64", "float16"))), "<f2")
    np.testing.assert_array_equal(half, x.astype(np.float16))
    assert len(to_dtype_bytes(x, "bfloat16")) == 14


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_orjson_numbers_are_the_float_lists(dtype: Any) -> None:
    """Responses serialise numpy arrays with orjson: the JSON must parse to exactly the
    numbers ``json.dumps`` gave for the Python float lists (only exponents are spelt
    differently: ``1e-7`` for ``1e-07``)."""
    import json

    from lamina_server.service import dumps_json

    rng = np.random.default_rng(1)
    for x64 in (rng.standard_normal(768), rng.standard_normal((5, 64)) * 1e-6):
        x = x64.astype(np.float32)
        float_lists = round_to_dtype(x, dtype).tolist()
        old = json.dumps(float_lists, separators=(",", ":")).encode()
        new = dumps_json(encode_array(x, "float", dtype))
        assert json.loads(new) == json.loads(old)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_safetensors_body_loads(dtype: Any) -> None:
    import torch
    from safetensors.torch import load

    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.ones(5, np.float32),
    }
    out = load(safetensors_bytes(tensors, dtype, {"model": "m"}))
    assert out["a"].dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(out["a"].float().numpy(), tensors["a"])
    assert out["b"].shape == (5,)


# -- budgets, errors, admission ----------------------------------------------------


def test_response_bytes() -> None:
    kw: dict[str, Any] = {"total_tokens": 8000, "num_prompts": 4, "hidden_size": 4096}
    assert response_bytes(num_layers=4, dtype="bfloat16", pooling="all", **kw) == 262_144_000
    assert response_bytes(num_layers=4, dtype="float32", pooling="last", **kw) == 4 * 4 * 4096 * 4


def test_error_table_and_envelope() -> None:
    assert STATUS_BY_TYPE[ErrorType.INVALID_REQUEST] == 422
    assert STATUS_BY_TYPE[ErrorType.TOO_LARGE] == 413
    assert STATUS_BY_TYPE[ErrorType.OVERLOADED] == 429
    assert STATUS_BY_TYPE[ErrorType.DRAINING] == 503
    assert STATUS_BY_TYPE[ErrorType.ENGINE] == 500
    assert set(STATUS_BY_TYPE) == set(ErrorType)
    assert error_body(ErrorType.TOO_LARGE, "big") == {
        "error": {"message": "big", "type": "request_too_large", "code": 413}
    }
    err = LaminaError(ErrorType.OVERLOADED, "busy", retry_after=2)
    assert err.headers() == {"Retry-After": "2"}


def test_admission() -> None:
    async def run() -> None:
        a = Admission(2)
        a.admit()
        a.admit()
        with pytest.raises(LaminaError) as e:
            a.admit()
        assert e.value.status == 429
        assert not await a.wait_idle(0.01)
        a.release()
        # Draining still admits (clients on open connections), within the same limit.
        a.start_drain()
        a.admit()
        with pytest.raises(LaminaError) as e:
            a.admit()
        assert e.value.status == 429
        a.release()
        a.release()
        assert await a.wait_idle(0.01)

    asyncio.run(run())


# -- HTTP layer over a fake engine ---------------------------------------------------


def test_hidden_states_over_fake_engine() -> None:
    async def run() -> None:
        client, _, engine = make_client()
        r = await client.post(
            "/v1/hidden_states", json={"prompts": ["ab", [5]], "layers": [-1, 0], "pooling": "mean"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["layer"] == -1
        assert body["resolved_layers"] == [3, 0]
        assert body["prompt_tokens"] == [2, 1]
        want = engine.rows(engine.tokenize("ab"), 3).mean(0)
        np.testing.assert_allclose(body["hidden_states"][0], want)
        assert body["data"][1]["layers"][1]["hidden_state"] == engine.rows([5], 0)[0].tolist()
        assert HiddenStatesResponse.model_validate(body).model_dump() == body  # same shape

    asyncio.run(run())


def test_api_key_required_except_probes() -> None:
    async def run() -> None:
        client, _, _ = make_client(api_key="s3cret")
        body = {"prompts": ["x"]}
        r = await client.post("/v1/hidden_states", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        r = await client.post(
            "/v1/hidden_states", json=body, headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        r = await client.post(
            "/v1/hidden_states", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 200
        for path in ("/health", "/healthz", "/readyz", "/metrics"):
            assert (await client.get(path, follow_redirects=True)).status_code == 200, path

    asyncio.run(run())


def test_queue_full_and_draining_over_fake_engine() -> None:
    async def run() -> None:
        client, state, _ = make_client(delay=0.3, max_queue_length=2)
        body = {"prompts": ["x"]}
        rs = await asyncio.gather(*[client.post("/v1/hidden_states", json=body) for _ in range(4)])
        assert sorted(r.status_code for r in rs) == [200, 200, 429, 429]
        assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 429)
        state.admission.start_drain()
        # Served, and told to reconnect (to another pod, the endpoint being gone).
        r = await client.post("/v1/hidden_states", json=body)
        assert r.status_code == 200
        assert r.headers["connection"] == "close"
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/health")).json()["status"] == "draining"

    asyncio.run(run())


def test_metrics_over_fake_engine() -> None:
    async def run() -> None:
        client, _, _ = make_client()
        await client.post("/v1/hidden_states", json={"prompts": ["abc"], "layers": [0, 1]})
        await client.post("/v1/hidden_states", content=b"{")
        text = (await client.get("/metrics/")).text
        requests = "lamina_requests_total"
        assert total(text, requests, code="200", route="/v1/hidden_states") == 1
        assert total(text, requests, code="422", route="/v1/hidden_states") == 1
        assert total(text, "lamina_prompt_tokens_total") == 3
        assert total(text, "lamina_hidden_state_bytes_total") == 2 * 8 * 4

    asyncio.run(run())


def test_loading_and_draining_are_503s_a_client_can_tell_apart() -> None:
    async def run() -> None:
        client, state, _ = make_client()
        state.ready = False
        for r in (
            await client.post("/v1/hidden_states", json={"prompts": ["x"]}),
            await client.get("/readyz"),
        ):
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "model_loading"
        state.ready = True
        state.admission.start_drain()
        r = await client.get("/readyz")
        assert (r.status_code, r.json()["error"]["type"]) == (503, "service_unavailable")

    asyncio.run(run())


def test_completions_wrapper_strips_field_and_merges_states() -> None:
    import json

    from lamina_server.app import LaminaMiddleware
    from lamina_server.completions import CompletionsHiddenStates
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    seen: list[dict[str, Any]] = []

    async def completions(request: Request) -> JSONResponse:
        seen.append(json.loads(await request.body()))
        return JSONResponse({"object": "text_completion", "choices": [{"text": "ok"}]})

    inner = Starlette()
    inner.add_route("/v1/completions", completions, methods=["POST"])

    _, state, engine = make_client()
    app = LaminaMiddleware(CompletionsHiddenStates(inner, state), state)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"prompt": "ab", "max_tokens": 1}
            r = await client.post(
                "/v1/completions", json={**body, "output_hidden_states": {"layer": 0}}
            )
            assert r.status_code == 200, r.text
            assert seen[-1] == body
            out = r.json()
            assert out["choices"] == [{"text": "ok"}]
            want = engine.rows(engine.tokenize("ab"), 0)[-1]
            assert out["hidden_states"]["hidden_states"][0] == want.tolist()
            r = await client.post("/v1/completions", json=body)
            assert "hidden_states" not in r.json()
            assert seen[-1] == body
            r = await client.post(
                "/v1/completions", json={**body, "stream": True, "output_hidden_states": True}
            )
            assert r.status_code == 422
            assert len(seen) == 2
            # The seed client's shape: one vector, the last prompt token at that layer.
            legacy = {"output_hidden_states": True, "hidden_state_layer": -2}
            r = await client.post("/v1/completions", json={**body, **legacy})
            assert r.status_code == 200, r.text
            assert seen[-1] == body
            assert r.json()["hidden_states"] == engine.rows(engine.tokenize("ab"), 2)[-1].tolist()
            assert r.json()["hidden_states_metadata"]["engine_dtype"] == "float32"
            assert r.headers["x-lamina-engine-dtype"] == "float32"
            many = {**body, "prompt": ["ab", "c"], **legacy}
            vectors = (await client.post("/v1/completions", json=many)).json()["hidden_states"]
            assert vectors[1] == engine.rows(engine.tokenize("c"), 2)[-1].tolist()
            # ... and the layer alone (it always sends it) changes nothing.
            r = await client.post(
                "/v1/completions",
                json={**body, "output_hidden_states": False, "hidden_state_layer": -2},
            )
            assert "hidden_states" not in r.json()
            assert seen[-1] == body
            for bad in ({"layers": [0]}, "yes"):
                r = await client.post(
                    "/v1/completions",
                    json={**body, "output_hidden_states": bad, "hidden_state_layer": -2},
                )
                assert r.status_code == 422, bad
            r = await client.post(
                "/v1/completions",
                json={**body, "output_hidden_states": True, "hidden_state_layer": "-2"},
            )
            assert "integer layer index" in r.json()["error"]["message"]

    asyncio.run(run())


def test_seed_clients_fields_are_accepted_and_nothing_else() -> None:
    async def run() -> None:
        client, _, engine = make_client()
        seed = {
            "prompts": ["ab"],
            "layer": -2,
            "maxTokens": 1,
            "temperature": 0.0,
            "returnHiddenStates": True,
        }
        r = await client.post("/v1/hidden_states", json=seed)
        assert r.status_code == 200, r.text
        assert r.json()["hidden_states"][0] == engine.rows(engine.tokenize("ab"), 2)[-1].tolist()
        r = await client.post("/v1/hidden_states", json={**seed, "topK": 1})
        assert r.status_code == 422
        assert "topK" in r.json()["error"]["message"]
        r = await client.post("/v1/hidden_states", json={**seed, "returnHiddenStates": False})
        assert r.status_code == 422

    asyncio.run(run())


def test_health_tells_old_and_new_clients_the_truth() -> None:
    async def run() -> None:
        client, state, _ = make_client(max_prompts_per_request=8)
        r = await client.get("/health")
        assert r.status_code == 200
        health = r.json()
        assert health["status"] == "healthy"  # what the seed clients test
        assert health["dtype"] == "float32"
        assert (health["device"], health["gpu"], health["memory"]) == ("cpu", None, "0.00GB")
        assert health["limits"]["max_prompts_per_request"] == 8
        r = await client.post("/v1/hidden_states", json={"prompts": ["x"]})
        assert r.json()["metadata"]["engine_dtype"] == "float32"
        assert r.headers["x-lamina-engine-dtype"] == "float32"
        state.ready = False
        r = await client.get("/health")
        assert (r.status_code, r.json()["status"]) == (503, "loading")
        state.ready = True
        state.admission.start_drain()
        r = await client.get("/health")
        assert (r.status_code, r.json()["status"]) == (503, "draining")

    asyncio.run(run())


@pytest.mark.parametrize(
    ("requested", "checkpoint", "quantization", "want"),
    [
        ("auto", "float32", None, "float32"),  # vLLM's auto would give half precision
        ("auto", "torch.bfloat16", None, "bfloat16"),
        ("auto", "float16", None, "float16"),
        ("auto", None, None, "float32"),  # unrecorded: transformers' default
        ("auto", "float64", None, "float32"),
        ("bfloat16", "float32", None, "bfloat16"),  # asked for: kept
        ("auto", "bfloat16", "awq", "auto"),  # quantised: the kernels decide
    ],
)
def test_engine_dtype_keeps_the_checkpoints(
    requested: str, checkpoint: str | None, quantization: str | None, want: str
) -> None:
    assert engine_dtype(requested, checkpoint, quantization) == want


def test_tests_run_this_trees_code() -> None:
    import lamina_server

    tree = Path(__file__).resolve().parents[2] / "server"
    assert Path(lamina_server.__file__).resolve().is_relative_to(tree)


# -- hostile input: limits, envelope, disconnects (issue 15) ---------------------------


def wrapped_completions(
    **settings: Any,
) -> tuple[httpx.AsyncClient, ServerState, list[bytes]]:
    """The server's ASGI stack over a stand-in for vLLM's completions route (records
    the bodies it gets)."""
    from lamina_server.app import LaminaMiddleware
    from lamina_server.completions import CompletionsHiddenStates
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    seen: list[bytes] = []

    async def completions(request: Request) -> JSONResponse:
        seen.append(await request.body())
        return JSONResponse({"choices": [{"text": "ok"}]})

    inner = Starlette()
    inner.add_route("/v1/completions", completions, methods=["POST"])
    _, state, _ = make_client(**settings)
    app = LaminaMiddleware(CompletionsHiddenStates(inner, state), state)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return client, state, seen


def envelope_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["code"] == status
    return str(err["message"])


def requests_by_code(state: ServerState) -> dict[str, float]:
    """lamina_requests_total summed over routes."""
    out: dict[str, float] = {}
    (requests,) = state.metrics.requests.collect()
    for s in requests.samples:
        if s.name == "lamina_requests_total":
            out[s.labels["code"]] = out.get(s.labels["code"], 0) + s.value
    return out


def test_json_problem_finds_values_depth_long_arrays_and_big_integers() -> None:
    import json

    from lamina_server.limits import json_problem

    def problem(body: bytes, max_values: int = 1000) -> str | None:
        err = json_problem(body, 8, 100, max_values)
        return None if err is None else f"{err.status} {err.message}"

    # Brackets, separators, digits and quotes inside strings do not count; fractions
    # are not integers.
    fine = {"p": 'a[[[[[[[[[[b, 99999999999999999999: \\"[' * 300, "f": 1.123456789012345678901}
    assert problem(json.dumps(fine).encode()) is None
    assert problem(b'{"e": 1e-12345678901234567890, "x": [[[[[[[1]]]]]]]}') is None
    assert problem(b"[" * 9 + b"]" * 9) == "413 JSON nested deeper than 8 levels"
    assert problem(b'{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}') == (
        "413 JSON nested deeper than 8 levels"
    )
    # any kind of item counts, one array at a time
    items: tuple[object, ...] = (7, "s", [], {}, None)
    for item in items:
        long = json.dumps({"m": [item] * 101, "n": [item] * 100}).encode()
        assert problem(long) == "413 a JSON array holds more than 100 items"
        assert problem(json.dumps({"m": [item] * 100, "n": [item] * 100}).encode()) is None
    # values: every one counts (keys and containers too), whatever the shape
    assert problem(json.dumps([[1] * 50] * 9).encode(), max_values=460) is None
    assert problem(json.dumps([[1] * 50] * 10).encode(), max_values=460) == (
        "413 the body holds more than 460 JSON values"
    )
    assert problem(json.dumps({str(i): i for i in range(100)}).encode(), max_values=200) == (
        "413 the body holds more than 200 JSON values"
    )
    assert problem(b'["a" "b" "c"]', max_values=2) == "413 the body holds more than 2 JSON values"
    assert problem(b'{"top_k": 9223372036854775807, "b": -9223372036854775808}') is None
    big = problem(b'{"top_k": 9223372036854775808}')
    assert big is not None
    assert big.startswith("422 integer 9223372036854775808")
    assert problem(b'{"seed": -9223372036854775809}') is not None
    # malformed JSON is the parser's to refuse: no crash, no false alarm
    for broken in (b'{"a": "unterminated', b"]]]}}", b'"\\', b""):
        assert problem(broken) is None


def test_other_layers_errors_come_in_the_envelope() -> None:
    import json

    from lamina_server.errors import normalized_error

    async def run() -> None:
        client, _, _ = make_client()
        r = await client.get("/v1/hidden_states")
        assert envelope_of(r, 405) == "/v1/hidden_states takes POST, not GET"
        assert r.json()["error"]["type"] == "method_not_allowed"
        assert r.headers["allow"] == "OPTIONS, POST"
        r = await client.put("/health", content=b"[" * 100_000)
        assert envelope_of(r, 405) == "/health takes GET, not PUT"
        # vLLM's other routes are not served; nothing is read of an unknown route's body
        for path in ("/tokenize", "/v1/responses", "/nope", "/v1/hidden_states/"):
            r = await client.post(path, content=b"[" * 100_000)
            assert envelope_of(r, 404) == f"no route {path}"

    asyncio.run(run())
    # FastAPI's body-parse 400, its validation list, vLLM's envelope with "param", text.
    cases = [
        (400, b'{"detail":"There was an error parsing the body"}', "There was an error"),
        (422, b'{"detail":[{"loc":["body","n"],"msg":"bad"}]}', "body.n: bad"),
        (400, b'{"error":{"message":"m","type":"BadRequestError","param":null,"code":400}}', "m"),
        (413, b"too big", "too big"),
        (404, b"", "Not Found"),
    ]
    for status, payload, message in cases:
        body = json.loads(normalized_error(status, payload))
        assert set(body["error"]) == {"message", "type", "code"}
        assert body["error"]["code"] == status
        assert message in body["error"]["message"]
    ours = error_body(ErrorType.TOO_LARGE, "x")
    assert json.loads(normalized_error(413, json.dumps(ours).encode()))


def test_body_limits_before_any_parser() -> None:
    async def run() -> None:
        client, state, seen = wrapped_completions(
            max_body_bytes=1000, max_json_depth=16, max_json_array_items=50
        )
        ok = {"prompt": "ab", "max_tokens": 1}
        assert (await client.post("/v1/completions", json=ok)).status_code == 200
        assert len(seen) == 1
        r = await client.post("/v1/completions", json={**ok, "p": "x" * 1000})
        assert "1000-byte limit" in envelope_of(r, 413)

        async def chunks() -> Any:  # no content-length: counted as it arrives
            for _ in range(20):
                yield b" " * 100

        r = await client.post("/v1/completions", content=chunks())
        assert "1000-byte limit" in envelope_of(r, 413)
        deep = b'{"prompt": "ab", "output_hidden_states": true, "x": ' + b"[" * 17 + b"]" * 17
        r = await client.post("/v1/completions", content=deep + b"}")
        assert "nested deeper than 16" in envelope_of(r, 413)
        r = await client.post("/v1/completions", json={**ok, "prompt": list(range(51))})
        assert "more than 50 items" in envelope_of(r, 413)
        # Cause (c) of issue 15: vLLM fails with a 500 on integers it cannot serialise.
        r = await client.post("/v1/completions", json={**ok, "top_k": 2**64})
        assert "outside the 64-bit range" in envelope_of(r, 422)
        r = await client.post("/v1/hidden_states", content=b'{"prompts": ["a"], "x":' + b"[" * 17)
        assert "nested deeper" in envelope_of(r, 413)
        assert len(seen) == 1  # none of them reached vLLM
        assert requests_by_code(state) == {"200": 1, "413": 5, "422": 1}

    asyncio.run(run())


def test_hidden_state_field_with_hostile_json_is_a_4xx() -> None:
    """Causes (a) and (b) of issue 15, in the completions wrapper itself: deep JSON gave
    a RecursionError, a lone surrogate the tokenizer's TypeError (both 500s)."""
    import json

    from lamina_server.service import check_text

    async def run() -> None:
        # the middleware's depth limit off, to reach the wrapper's own parser
        client, _, seen = wrapped_completions(max_json_depth=100_000)
        deep = b"[" * 5000 + b"]" * 5000
        body = b'{"prompt": "ab", "output_hidden_states": true, "x": ' + deep + b"}"
        r = await client.post("/v1/completions", content=body)
        assert "invalid JSON" in envelope_of(r, 422)
        lone = b'{"prompt": "a\\ud800b", "output_hidden_states": true, "max_tokens": 1}'
        r = await client.post("/v1/completions", content=lone)
        assert "invalid JSON" in envelope_of(r, 422)
        assert seen == []  # vLLM never got the request with our field in it
        # the same text as a /v1/hidden_states prompt, past the JSON parser
        with pytest.raises(LaminaError, match=r"prompts\[0\] is not valid Unicode") as e:
            check_text("a\ud800b", "prompts[0]")
        assert e.value.status == 422
        r = await client.post(
            "/v1/completions", json={"prompt": "ab", "output_hidden_states": True}
        )
        assert r.status_code == 200, r.text
        assert json.loads(r.text)["hidden_states"]["prompt_tokens"] == [2]

    asyncio.run(run())


def test_prompt_characters_and_token_ids_checked_before_work() -> None:
    async def run() -> None:
        client, _, engine = make_client(max_prompt_chars=10)
        calls: list[str] = []
        tokenize = engine.tokenize

        def counting_tokenize(text: str, add_special_tokens: bool = True) -> list[int]:
            calls.append(text)
            return tokenize(text, add_special_tokens)

        engine.tokenize = counting_tokenize  # type: ignore[method-assign]
        r = await client.post("/v1/hidden_states", json={"prompts": ["abcdef", "ghijk"]})
        assert "11 characters > 10" in envelope_of(r, 413)
        assert calls == []  # refused before tokenizing
        r = await client.post("/v1/hidden_states", json={"prompts": [[1000] * 70]})
        assert "70 tokens" in envelope_of(r, 422)  # the count, before each id's range
        r = await client.post("/v1/embeddings", json={"input": "abcdefghijk"})
        assert "characters" in envelope_of(r, 413)

    asyncio.run(run())


def test_client_disconnect_is_499_logged_once_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from lamina_server.app import LaminaMiddleware

    _, state, _ = make_client()
    app = create_app(state)  # routes without the middleware: wrapped below
    asgi = LaminaMiddleware(app, state)
    sent: list[Any] = []

    async def gone() -> Any:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/hidden_states",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    with caplog.at_level(logging.INFO, logger="lamina_server"):
        asyncio.run(asgi(scope, gone, send))
    assert requests_by_code(state) == {"499": 1}
    lines = [r for r in caplog.records if r.name == "lamina_server"]
    assert [r.levelname for r in lines] == ["INFO"]
    assert "client disconnected" in lines[0].getMessage()
    assert lines[0].exc_info is None


def test_vllm_routes_get_cheap_shapes_and_no_grammars() -> None:
    from lamina_server.openai_checks import completion_problem

    s = LaminaSettings(max_chat_items=6, max_prompts_per_request=8, max_prompt_chars=10)

    def problem(path: str, body: Any) -> str | None:
        err = completion_problem(path, body, s)
        return None if err is None else f"{err.status} {err.message}"

    chat = "/v1/chat/completions"
    ok = {"messages": [{"role": "user", "content": "hi"}]}
    assert problem(chat, ok) is None
    parts = [{"type": "text", "text": "a"}] * 5
    assert problem(chat, {"messages": [{"role": "user", "content": parts}]}) is None
    assert problem(chat, {"messages": [{"role": "user", "content": parts + parts[:1]}]}) == (
        "413 more than 6 messages, content parts and tools in one chat request"
    )
    assert problem(chat, {**ok, "tools": [{}] * 6}) is not None
    # the shapes vLLM spends tens of microseconds and a dozen errors on, per item
    assert problem(chat, {"messages": [{"role": "user", "content": [7] * 100_000}]}) == (
        "422 messages[0].content must be text or a list of content-part objects"
    )
    for bad in ({}, 5, {"role": 5}, {"content": "x"}):
        assert problem(chat, {"messages": [ok["messages"][0], bad]}) == (
            "422 messages[1] must be an object with a text 'role'"
        )
    assert problem(chat, {"messages": "x"}) is None  # one cheap error: vLLM's own
    assert problem("/v1/completions", [1, 2]) is None
    # grammars are compiled in the engine: refused; plain formats pass
    for fmt in ("text", "json_object"):
        assert problem(chat, {**ok, "response_format": {"type": fmt}}) is None
    for extra in (
        {"response_format": {"type": "json_schema", "json_schema": {}}},
        {"structured_outputs": {"regex": "a{1000}{1000}"}},
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    ):
        err = problem("/v1/completions", {"prompt": "a", **extra})
        assert err is not None
        assert err.startswith("422 ")
        assert "grammar-constrained decoding" in err
    # fan-out: prompts x n
    assert problem("/v1/completions", {"prompt": "a", "n": 8}) is None
    assert problem("/v1/completions", {"prompt": [1, 2, 3], "n": 8}) is None
    assert problem("/v1/completions", {"prompt": ["a", "b"], "n": 5}) == (
        "413 the request asks for 10 completions (prompts x n), more than 8"
    )
    assert problem(chat, {**ok, "n": 16384}) is not None
    # text is counted before vLLM tokenizes it: prompts, message contents, text parts
    too_much = "413 too much text: 11 characters > 10 per request"
    assert problem("/v1/completions", {"prompt": "a" * 10}) is None
    assert problem("/v1/completions", {"prompt": "a" * 11}) == too_much
    assert problem("/v1/completions", {"prompt": ["a" * 5, "a" * 6]}) == too_much
    assert problem("/v1/completions", {"prompt": [7] * 11}) is None  # ids: counted as ids
    text_parts = [{"type": "text", "text": "a" * 5}, {"type": "text", "text": "a" * 6}]
    assert problem(chat, {"messages": [{"role": "user", "content": text_parts}]}) == too_much
    two = [{"role": "user", "content": "a" * 5}, {"role": "assistant", "content": "a" * 6}]
    assert problem(chat, {"messages": two}) == too_much


def test_health_answers_while_a_prompt_is_tokenized() -> None:
    """Tokenizing runs on the worker thread: the event loop answers probes meanwhile."""
    import threading

    async def run() -> None:
        client, _, engine = make_client()
        started, release = threading.Event(), threading.Event()
        tokenize = engine.tokenize

        def slow_tokenize(text: str, add_special_tokens: bool = True) -> list[int]:
            started.set()
            assert release.wait(30)
            return tokenize(text)

        engine.tokenize = slow_tokenize  # type: ignore[method-assign]
        request = asyncio.create_task(client.post("/v1/hidden_states", json={"prompts": ["ab"]}))
        assert await asyncio.to_thread(started.wait, 30)
        for path in ("/health", "/healthz", "/readyz"):
            assert (await client.get(path)).status_code == 200
        assert not request.done()  # still tokenizing
        release.set()
        assert (await request).status_code == 200

    asyncio.run(run())


def test_parse_lane_lets_the_loop_turn_between_big_bodies() -> None:
    from lamina_server.limits import ParseLane

    async def run() -> list[str]:
        lane = ParseLane(min_bytes=100)
        order: list[str] = []

        async def parse(name: str, size: int) -> None:
            await lane.enter(b" " * size)
            order.append(name)  # the caller parses right here, in the same step

        async def probe() -> None:
            order.append("probe")

        await asyncio.gather(parse("big-1", 100), parse("big-2", 100), parse("small", 99), probe())
        return order

    # big-2 waits for the loop to come round (after the probe); small bodies never wait
    assert asyncio.run(run()) == ["big-1", "small", "probe", "big-2"]


def test_big_answers_render_in_short_calls_with_the_same_bytes() -> None:
    from lamina_server.encoding import base64_text
    from lamina_server.service import dumps_json

    data = bytes(range(256)) * ((3 << 20) // 256 + 7)  # across a chunk boundary
    assert base64_text(data) == base64.b64encode(data).decode()
    rows = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float64)
    import orjson

    assert dumps_json({"x": rows, "y": rows[0]}) == orjson.dumps(
        {"x": rows, "y": rows[0]}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def test_each_refusal_is_one_info_line_saying_why(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    async def run() -> None:
        client, _, _ = make_client()
        await client.post("/v1/hidden_states", json={"prompts": ["x"], "layers": [9]})
        await client.get("/v1/hidden_states")
        await client.post("/v1/hidden_states", json={"prompts": ["x"]})  # served: no line

    with caplog.at_level(logging.INFO, logger="lamina_server"):
        asyncio.run(run())
    lines = [r for r in caplog.records if r.name == "lamina_server"]
    assert [r.levelname for r in lines] == ["INFO", "INFO"]
    assert all(r.exc_info is None for r in lines)
    first, second = (r.getMessage() for r in lines)
    assert first.startswith("refused POST /v1/hidden_states: 422 invalid_request_error: ")
    assert "layer 9" in first
    assert second == (
        "refused GET /v1/hidden_states: 405 method_not_allowed: /v1/hidden_states takes POST, "
        "not GET"
    )


def test_log_format_json_gives_one_json_object_per_line() -> None:
    import io
    import json
    import logging

    from lamina_server.logs import log_to_stderr

    settings, _ = parse_command_line(["--model", "m"], {"LAMINA_LOG_FORMAT": "json"})
    assert settings.log_format == "json"
    logger = logging.getLogger("lamina_server.test_json_lines")
    log_to_stderr(logger, settings.log_format)
    stream = io.StringIO()
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logger.info("model loaded in %.1fs", 2.5)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("engine error")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["level"], x["message"]) for x in lines] == [
        ("INFO", "model loaded in 2.5s"),
        ("ERROR", "engine error"),
    ]
    assert "ValueError: boom" in lines[1]["exception"]
    assert lines[0]["logger"] == "lamina_server.test_json_lines"
    with pytest.raises(SystemExit):
        parse_command_line(["--log-format", "xml"], {})
