"""/metrics is Prometheus text that parses and moves as requests are made."""

from __future__ import annotations

import httpx
import pytest
from metrics_text import samples
from server.server_helpers import Server

pytestmark = pytest.mark.vllm


def scrape(server: Server) -> dict[str, float]:
    r = httpx.get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for s in samples(r.text):
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        values[f"{s.name}{{{labels}}}"] = s.value
    return values


def test_metrics_parse_and_move(llama_server: Server) -> None:
    before = scrape(llama_server)
    for name in (
        "lamina_requests_in_flight{}",
        "lamina_queue_depth{}",
        "lamina_prompt_tokens_total{}",
        "lamina_hidden_state_bytes_total{}",
        "lamina_batch_size_count{}",
    ):
        assert name in before, name
    info = [k for k in before if k.startswith("lamina_model_info{")]
    assert len(info) == 1
    assert "num_layers=4" in info[0]
    assert "hidden_size=256" in info[0]
    assert any(k.startswith("vllm:") for k in before), "vLLM's own metrics are exported too"

    r = httpx.post(
        f"{llama_server.url}/v1/hidden_states",
        json={"prompts": [[3, 4, 5], [6, 7]], "layers": [0, 1], "pooling": "last"},
        timeout=60,
    )
    assert r.status_code == 200
    bad = httpx.post(f"{llama_server.url}/v1/hidden_states", json={"x": 1}, timeout=60)
    assert bad.status_code == 422
    after = scrape(llama_server)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("lamina_requests_total{code=200,route=/v1/hidden_states}") == 1
    assert delta("lamina_requests_total{code=422,route=/v1/hidden_states}") == 1
    assert delta("lamina_prompt_tokens_total{}") == 5
    assert delta("lamina_hidden_state_bytes_total{}") == 2 * 2 * 256 * 4
    assert delta("lamina_batch_size_count{}") == 1
    assert delta("lamina_request_duration_seconds_count{route=/v1/hidden_states}") == 2
    assert after["lamina_requests_in_flight{}"] == 0
    assert after["lamina_queue_depth{}"] == 0


def test_probes(llama_server: Server) -> None:
    health = httpx.get(f"{llama_server.url}/health", timeout=10)
    assert health.status_code == 200
    answer = health.json()
    assert answer.pop("weights_bytes") > 0
    assert answer.pop("memory").endswith("GB")
    assert answer == {
        "status": "healthy",
        "model": str(llama_server.model),
        "num_layers": 4,
        "hidden_size": 256,
        "max_model_len": 256,
        "dtype": "float32",
        "device": "cpu",
        "gpu": None,
        "limits": {
            "max_prompts_per_request": 64,
            "max_tokens_per_request": 4000,
            "max_response_bytes": 1 << 20,
        },
        "maps": [],  # none loaded (--map)
    }
    assert httpx.get(f"{llama_server.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{llama_server.url}/readyz", timeout=10).status_code == 200
