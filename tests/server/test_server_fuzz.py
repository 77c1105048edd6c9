"""1,000+ generated requests, valid and not: never a 5xx; the server still answers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import Server

pytestmark = pytest.mark.vllm

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
any_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
prompt = st.one_of(
    st.text(max_size=60),
    st.lists(st.integers(min_value=-5, max_value=600), max_size=40),
    any_json,
)
layer = st.integers(min_value=-6, max_value=6) | any_json
body = st.fixed_dictionaries(
    {},
    optional={
        "prompts": st.lists(prompt, max_size=4) | any_json,
        "layers": st.lists(layer, max_size=5) | any_json,
        "layer": layer,
        "pooling": st.sampled_from(["last", "mean", "all", "max", ""]) | any_json,
        "encoding_format": st.sampled_from(["float", "base64", "hex"]),
        "dtype": st.sampled_from(["float32", "float16", "bfloat16", "int8"]),
        "max_tokens": st.integers(min_value=-2, max_value=5),
        "temperature": st.floats(allow_nan=False, allow_infinity=False) | any_json,
        "return_hidden_states": st.booleans() | any_json,
        "model": any_json,
        "unknown": any_json,
    },
)
raw = st.binary(max_size=64) | st.text(max_size=64).map(str.encode)
request = st.one_of(
    body.map(lambda b: json.dumps(b).encode()),
    body.map(lambda b: json.dumps(b).encode()),
    raw,
)


@pytest.fixture(scope="module")
def http(llama_server: Server) -> Any:
    with httpx.Client(base_url=llama_server.url, timeout=60) as client:
        yield client


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(content=request, route=st.sampled_from(["/v1/hidden_states", "/v1/embeddings"]))
def test_fuzz_never_5xx(http: httpx.Client, content: bytes, route: str) -> None:
    r = http.post(route, content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (content, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "code"}


def test_canary_after_fuzz(http: httpx.Client) -> None:
    r = http.post("/v1/hidden_states", json={"prompts": ["still alive?"], "layers": [-1]})
    assert r.status_code == 200
    assert len(r.json()["hidden_states"][0]) == 256
