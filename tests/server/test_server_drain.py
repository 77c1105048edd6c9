"""Overload and shutdown: 429 + Retry-After when the queue is full; on SIGTERM
readiness fails at once, in-flight work completes, work still arriving on open
connections is answered with `Connection: close` (clients move to another pod), the
process exits.
Also: a client that goes away aborts its engine work; the API key guards vLLM's routes.

Uses its own server (queue limit 3, small prefill budget so requests take a while),
configured through LAMINA_* environment variables and with LAMINA_API_KEY set.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from metrics_text import scrape, total
from server.server_helpers import Server

pytestmark = pytest.mark.vllm

QUEUE = 3
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
# 16 prompts x 240 tokens with a 32-token prefill budget: well over a second each.
SLOW = {"prompts": [[(7 * i + j) % 500 + 3 for j in range(240)] for i in range(16)]}


@pytest.fixture(scope="module")
def small_server(tiny_models: dict[str, Path]) -> Iterator[Server]:
    args = [
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-num-batched-tokens",
        "32",
        "--kv-cache-memory-bytes",
        str(256 << 20),
        "--disable-uvicorn-access-log",
    ]
    env = {
        "LAMINA_API_KEY": KEY,
        "LAMINA_MAX_QUEUE_LENGTH": str(QUEUE),
        "LAMINA_DRAIN_TIMEOUT_SECONDS": "120",
    }
    server = Server("llama-small", tiny_models["llama"], args, env=env).start().wait_ready()
    yield server
    server.stop()


async def _post_all(server: Server, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, timeout=300, headers=AUTH) as client:
        return list(
            await asyncio.gather(*[client.post("/v1/hidden_states", json=SLOW) for _ in range(n)])
        )


def test_api_key_guards_vllm_and_lamina_routes(small_server: Server) -> None:
    url = small_server.url
    completion = {"model": str(small_server.model), "prompt": "hi", "max_tokens": 2}
    for method, path, body in (
        ("POST", "/v1/completions", completion),
        ("POST", "/v1/hidden_states", {"prompts": ["hi"]}),
        ("GET", "/v1/models", None),
    ):
        r = httpx.request(method, url + path, json=body, timeout=30)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.request(method, url + path, json=body, headers=wrong).status_code == 401
        assert httpx.request(method, url + path, json=body, headers=AUTH).status_code == 200
    for path in ("/health", "/healthz", "/readyz", "/metrics"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path


def test_queue_full_is_429_with_retry_after(small_server: Server) -> None:
    responses = asyncio.run(_post_all(small_server, QUEUE + 5))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1
    assert codes.count(429) >= 5, codes
    assert set(codes) <= {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["type"] == "overloaded_error"
            assert "too many requests in flight" in err["message"]


def _gauge(server: Server, name: str) -> float:
    return total(scrape(server.url), name)


def _in_flight(server: Server) -> float:
    return _gauge(server, "lamina_requests_in_flight")


def test_client_disconnect_aborts_engine_work(small_server: Server) -> None:
    heavy = {"prompts": SLOW["prompts"] * 4}  # 64 x 240 tokens: many seconds of work
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{small_server.url}/v1/hidden_states", json=heavy, timeout=1.0, headers=AUTH)
    deadline = time.monotonic() + 3
    while True:
        depth = _gauge(small_server, "lamina_queue_depth")
        running = _gauge(small_server, "vllm:num_requests_running")
        waiting = _gauge(small_server, "vllm:num_requests_waiting")
        if depth == running == waiting == 0:
            break
        assert time.monotonic() < deadline, (depth, running, waiting)
        time.sleep(0.1)
    # the engine is free again: a small request is answered at once
    r = httpx.post(
        f"{small_server.url}/v1/hidden_states", json={"prompts": ["hi"]}, timeout=10, headers=AUTH
    )
    assert r.status_code == 200


def test_sigterm_drains(small_server: Server) -> None:
    assert small_server.proc is not None

    async def scenario() -> tuple[list[httpx.Response], dict[str, Any]]:
        seen: dict[str, Any] = {}
        url = small_server.url
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) as kept_alive,
            httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) as fresh,
        ):
            # A client holding a keep-alive connection, as SDKs do.
            assert (await kept_alive.get("/health")).status_code == 200
            # One slot left free: the late request must not meet a full queue.
            work = asyncio.ensure_future(_post_all(small_server, QUEUE - 1))
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(_in_flight, small_server) < QUEUE - 1:
                assert time.monotonic() < deadline, "requests never got in flight"
                await asyncio.sleep(0.05)
            assert small_server.proc is not None
            small_server.proc.send_signal(signal.SIGTERM)
            while (ready := await fresh.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "readiness never failed after SIGTERM"
            seen["readyz"] = ready
            seen["health"] = await fresh.get("/health")
            seen["in_flight_at_probe"] = await asyncio.to_thread(_in_flight, small_server)
            seen["new"] = await kept_alive.post("/v1/hidden_states", json={"prompts": ["late"]})
        return await work, seen

    started = time.monotonic()
    finished, seen = asyncio.run(scenario())
    assert seen["in_flight_at_probe"] >= 1, "probes must run while work is still in flight"
    assert seen["readyz"].status_code == 503
    assert seen["health"].json()["status"] == "draining"
    assert seen["new"].status_code == 200
    assert seen["new"].headers["connection"] == "close"
    assert [r.status_code for r in finished] == [200] * (QUEUE - 1), "no in-flight request lost"
    for r in finished:
        assert r.json()["metadata"]["num_prompts"] == 16
    code = small_server.proc.wait(timeout=90)
    assert code == 0
    assert time.monotonic() - started < 120
