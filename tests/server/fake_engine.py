"""A fake engine for the HTTP layer's tests: deterministic hidden states, no vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np
from lamina_server.app import ServerState, create_app
from lamina_server.config import LaminaSettings, Pooling
from lamina_server.limits import Admission
from lamina_server.maps import LoadedMap
from lamina_server.metrics import Metrics
from lamina_server.service import F32, HiddenStateService, ModelFacts
from prometheus_client import CollectorRegistry
from server.reference_pooling import pool


class FakeEngine:
    """Deterministic 'hidden states': row p of layer l is (l + 1) * token + p."""

    def __init__(self, delay: float = 0.0) -> None:
        self.facts = ModelFacts(
            "fake",
            num_layers=4,
            hidden_size=8,
            max_model_len=64,
            vocab_size=100,
            max_chars_per_token=1,
            dtype="float32",
            device="cpu",
            accelerator=None,
            weights_bytes=1 << 20,
        )
        self.delay = delay
        self.cancelled = 0

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 100 for c in text]

    def chat_text(self, messages: Any) -> str:
        return "".join(m["content"] for m in messages)

    def rows(self, ids: Sequence[int], layer: int) -> F32:
        t = np.asarray(ids, np.float32)[:, None]
        return ((layer + 1) * t + np.arange(8, dtype=np.float32)).astype(np.float32)

    async def extract(
        self, prompts: Sequence[Sequence[int]], layers: Sequence[int], pooling: Pooling
    ) -> list[dict[int, F32]]:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [{la: pool(self.rows(ids, la), pooling) for la in layers} for ids in prompts]

    async def check_health(self) -> None:
        return None


def make_client(
    delay: float = 0.0, maps: Mapping[str, LoadedMap] | None = None, **settings: Any
) -> tuple[httpx.AsyncClient, ServerState, FakeEngine]:
    """An httpx client of the app over a :class:`FakeEngine` (``maps`` as if loaded)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    s = LaminaSettings(**settings)
    engine = FakeEngine(delay)
    state = ServerState(settings=s, metrics=metrics, admission=Admission(s.max_queue_length))
    state.service = HiddenStateService(engine, s, metrics, maps)
    state.ready = True
    app = create_app(state, metrics_registry=registry)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return client, state, engine
