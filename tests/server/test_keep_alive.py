"""A keep-alive connection is closed after --max-requests-per-connection answers, so
that clients holding one (the OpenAI SDKs, httpx, requests' sessions) reconnect and
reach replicas added since (kube-proxy balances connections, not requests).

The app over a fake engine, served by uvicorn with Lamina's h11 protocol on loopback:
the numbering lives in the protocol, per TCP connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from lamina_server.app import create_app
from lamina_server.http_protocol import LaminaH11Protocol
from prometheus_client import CollectorRegistry
from server.fake_engine import make_client
from server.server_helpers import free_port

LIMIT = 3


@asynccontextmanager
async def served() -> AsyncIterator[str]:
    """The server's base URL (on the test's own event loop)."""
    _, state, _ = make_client(max_requests_per_connection=LIMIT)
    port = free_port()
    config = uvicorn.Config(
        create_app(state, metrics_registry=CollectorRegistry()),
        host="127.0.0.1",
        port=port,
        http=LaminaH11Protocol,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_every_connection_is_closed_after_its_share_of_answers() -> None:
    opened: list[Any] = []

    async def connection_opened(event_name: str, info: dict[str, Any]) -> None:
        if event_name == "connection.connect_tcp.complete":
            opened.append(info["return_value"])

    async with served() as url, httpx.AsyncClient(base_url=url) as client:
        trace = {"trace": connection_opened}
        answers = [await client.get("/readyz", extensions=trace) for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 7
    closing = [a.headers.get("connection") == "close" for a in answers]
    # the count starts again on each new connection
    assert closing == [False, False, True, False, False, True, False]
    assert len(opened) == 3  # the client reconnected transparently, nothing failed


async def test_concurrent_connections_are_counted_apart() -> None:
    async with (
        served() as url,
        httpx.AsyncClient(base_url=url) as first,
        httpx.AsyncClient(base_url=url) as second,
    ):
        for _ in range(LIMIT - 1):
            assert "connection" not in (await first.get("/readyz")).headers
            assert "connection" not in (await second.get("/readyz")).headers
        assert (await first.get("/readyz")).headers["connection"] == "close"
        assert (await second.get("/readyz")).headers["connection"] == "close"
