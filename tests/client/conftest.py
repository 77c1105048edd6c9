"""Fixtures of the client tests: a fake server and clients that never really sleep.

``fake`` is a :class:`client_fake_server.FakeServer` (the HTTP contract over numpy
data); ``clock`` is a fake monotonic clock that the clients' sleeps advance, so
retry tests wait for nothing and can read what was waited.
"""

from __future__ import annotations

from collections.abc import Iterator

import lamina
import pytest
from client.client_fake_server import FakeClock, FakeServer, Twin, sync_client


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "install: builds a venv and pip-installs client/ from PyPI (about a minute)"
    )


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["Client", "AsyncClient"])
def twin(request: pytest.FixtureRequest, fake: FakeServer, clock: FakeClock) -> Twin:
    """The same calls through the sync client, then through the async one."""
    return Twin(request.param, fake, clock)


@pytest.fixture
def client(fake: FakeServer, clock: FakeClock) -> Iterator[lamina.Client]:
    with sync_client(fake, clock) as c:
        yield c
