"""Fixtures of the server tests: tiny models, running servers, the transformers reference.

Each vLLM server is started once (``python -m lamina_server`` as a subprocess on a
free port, ready when ``/readyz`` answers 200) and shared by every test that needs
it. The llama and gpt2 servers are launched together so their start-ups overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server.server_helpers import SERVER_FLAGS, Reference, Server
from tiny_model import TinyModelSpec, ensure_tiny_model

ARCH_SPECS = {
    "llama": TinyModelSpec(arch="llama"),
    "gpt2": TinyModelSpec(arch="gpt2"),
}


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return {arch: ensure_tiny_model(spec) for arch, spec in ARCH_SPECS.items()}


@pytest.fixture(scope="session")
def _launched(tiny_models: dict[str, Path]) -> Iterator[dict[str, Server]]:
    servers = {
        arch: Server(arch, path, list(SERVER_FLAGS)).start() for arch, path in tiny_models.items()
    }
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="session")
def llama_server(_launched: dict[str, Server]) -> Server:
    return _launched["llama"].wait_ready()


@pytest.fixture(scope="session")
def gpt2_server(_launched: dict[str, Server]) -> Server:
    return _launched["gpt2"].wait_ready()


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def server(request: pytest.FixtureRequest, _launched: dict[str, Server]) -> Server:
    return _launched[str(request.param)].wait_ready()


_REFS: dict[str, Reference] = {}


@pytest.fixture(scope="session")
def reference(tiny_models: dict[str, Path]) -> Any:
    def get(arch: str) -> Reference:
        if arch not in _REFS:
            _REFS[arch] = Reference(tiny_models[arch])
        return _REFS[arch]

    return get
