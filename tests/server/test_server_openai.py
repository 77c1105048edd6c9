"""The official ``openai`` client works for completions, chat and embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest
from server.server_helpers import Reference, Server

pytestmark = pytest.mark.vllm


@pytest.fixture
def client(llama_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="unused", timeout=120)


def test_models(client: openai.OpenAI, llama_server: Server) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [str(llama_server.model)]


def test_completions(client: openai.OpenAI, llama_server: Server) -> None:
    out = client.completions.create(
        model=str(llama_server.model), prompt="What is AI?", max_tokens=8, temperature=0
    )
    assert out.choices[0].finish_reason in {"length", "stop"}
    assert out.usage is not None
    assert out.usage.completion_tokens > 0


def test_completions_with_output_hidden_states(
    client: openai.OpenAI, llama_server: Server, reference: Any
) -> None:
    ref: Reference = reference("llama")
    out = client.completions.create(
        model=str(llama_server.model),
        prompt="What is AI?",
        max_tokens=4,
        extra_body={"output_hidden_states": {"layers": [1], "pooling": "last"}},
    )
    states = (out.model_extra or {})["hidden_states"]
    want = ref.expected(ref.tokens("What is AI?"), 1, "last")
    assert np.abs(np.asarray(states["hidden_states"][0]) - want).max() <= 1e-4


def test_chat_completions(client: openai.OpenAI, llama_server: Server) -> None:
    out = client.chat.completions.create(
        model=str(llama_server.model),
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage is not None
    assert out.usage.completion_tokens > 0


def test_embeddings_are_pooled_hidden_states(
    client: openai.OpenAI, llama_server: Server, reference: Any
) -> None:
    ref: Reference = reference("llama")
    texts = ["What is AI?", "The quick brown fox jumps over the lazy dog."]
    # the client asks for base64 float32 by default and decodes it itself
    out = client.embeddings.create(model=str(llama_server.model), input=texts)
    assert [d.index for d in out.data] == [0, 1]
    assert out.usage.prompt_tokens == sum(len(ref.tokens(t)) for t in texts)
    for text, d in zip(texts, out.data, strict=True):
        assert len(d.embedding) == 256
        want = ref.expected(ref.tokens(text), -2, "last")  # server defaults: -2, last
        assert np.abs(np.asarray(d.embedding) - want).max() <= 1e-4
    # float encoding, another layer and pooling through extra_body
    out = client.embeddings.create(
        model=str(llama_server.model),
        input=texts[0],
        encoding_format="float",
        extra_body={"layer": 1, "pooling": "mean"},
    )
    want = ref.expected(ref.tokens(texts[0]), 1, "mean")
    assert np.abs(np.asarray(out.data[0].embedding) - want).max() <= 1e-4
