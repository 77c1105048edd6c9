"""The clients: :class:`Client` (httpx.Client) and :class:`AsyncClient` (httpx.AsyncClient).

Everything they decide lives in :mod:`lamina.flow` and the pure modules; each class
only runs flows, sending their calls over HTTP and sleeping when told to.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from . import flow
from ._version import __version__
from .batching import ServerInfo, parse_health
from .errors import ConnectionFailed
from .flow import Call, Clocks, Flow, Reply, Sleep
from .retry import RetryPolicy
from .wire import OCTET_STREAM, DType, Pooling, Prompt, Result

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0  # seconds per request: a full batch of long prompts takes a while


class _Base:
    """Settings, the cached server facts and the flows both clients run."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        max_retries: int,
        retry_deadline: float,
        on_close: Callable[[], None] | None,
        clock: Callable[[], float],
        random: Callable[[], float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": f"lamina-client/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._policy = RetryPolicy(max_retries=max_retries, deadline=retry_deadline)
        self._clocks = Clocks(monotonic=clock, wall=time.time, random=random)
        self._on_close = on_close
        self._info: ServerInfo | None = None

    def _retrying(self, call: Call) -> Flow[Reply]:
        return flow.send_with_retries(call, self._policy, self._clocks)

    def health_flow(self) -> Flow[dict[str, Any]]:
        answer = yield from flow.health(flow.send_once)
        self._info = parse_health(answer)
        return answer

    def info_flow(self) -> Flow[ServerInfo]:
        # Read once: limits do not change while a server runs; 503 while the
        # model loads is waited out by the retries.
        if self._info is None:
            self._info = yield from flow.server_info(self._retrying)
        return self._info

    def hidden_states_flow(
        self,
        prompts: Sequence[Prompt],
        layers: int | Sequence[int],
        pooling: Pooling,
        dtype: DType,
        binary: bool | Literal["auto"],
        progress: Callable[[int], None] | None,
    ) -> Flow[Result]:
        layers = flow.check_arguments(prompts, layers, pooling, dtype)
        info = yield from self.info_flow()
        ask = flow.ask_layers(info, layers, pooling)
        return (
            yield from flow.hidden_states(
                self._retrying, info, prompts, ask, dtype, binary, progress
            )
        )

    def mapped_flow(
        self,
        prompts: Sequence[Prompt],
        name: str,
        dtype: DType,
        binary: bool | Literal["auto"],
        progress: Callable[[int], None] | None,
    ) -> Flow[Result]:
        flow.check_arguments(prompts, -1, "last", dtype)
        info = yield from self.info_flow()
        if name not in info.maps:  # maps load at start: a restarted server may have new ones
            self._info = None
            info = yield from self.info_flow()
        ask = flow.ask_map(info, name)
        return (
            yield from flow.hidden_states(
                self._retrying, info, prompts, ask, dtype, binary, progress
            )
        )

    def request_args(self, call: Call) -> dict[str, Any]:
        accept = OCTET_STREAM if call.binary else "application/json"
        return {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "headers": {"Accept": accept},
        }

    def closed(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


def _reply(response: httpx.Response) -> Reply:
    return Reply(response.status_code, response.content, response.headers.get("retry-after"))


def _no_answer(error: httpx.TransportError, base_url: str, timeout: float) -> ConnectionFailed:
    """What went wrong on the network, and whether trying again makes sense (a read
    that timed out is not retried: the server may still be busy with it)."""
    detail = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        return ConnectionFailed(
            f"no answer from {base_url} within {timeout:g} s ({detail})",
            hint="raise timeout=, or send fewer prompts per call",
        )
    return ConnectionFailed(f"cannot reach {base_url}: {detail}", retryable=True)


class Client:
    """Client of a Lamina hidden-state server.

    >>> with Client("http://localhost:8000") as client:
    ...     states = client.hidden_states(["Hello", "World"], layers=-2)  # [2, hidden]

    ``max_retries`` and ``retry_deadline`` bound the retries of 429/503 answers and
    failed connections; ``transport`` goes to httpx (tests); ``on_close`` runs once
    on :meth:`close` (a port-forward's stop, say); ``sleep``, ``clock`` and ``random``
    are for tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        retry_deadline: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        on_close: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._base = _Base(
            base_url,
            api_key=api_key,
            max_retries=max_retries,
            retry_deadline=retry_deadline,
            on_close=on_close,
            clock=clock,
            random=random,
        )
        self._timeout = timeout
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self._base.base_url,
            headers=self._base.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._base.base_url

    def health(self) -> dict[str, Any]:
        """``GET /health`` once, no retries (a 503 while loading raises Unavailable)."""
        return self._run(self._base.health_flow())

    def info(self) -> ServerInfo:
        """The served model's facts and the server's limits (read once, cached)."""
        return self._run(self._base.info_flow())

    def hidden_states(
        self,
        prompts: Sequence[Prompt],
        layers: int | Sequence[int] = -2,
        pooling: Pooling = "last",
        *,
        dtype: DType = "float32",
        binary: bool | Literal["auto"] = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        """Hidden states of ``prompts`` (texts or token-id lists), in prompt order.

        ``layers`` an int gives ``[prompts, hidden]``, a list ``[prompts, layers,
        hidden]``; with ``pooling="all"`` a list with one ``[tokens, hidden]`` (or
        ``[layers, tokens, hidden]``) array per prompt. float16 comes back as
        float16, bfloat16 widened to float32. ``binary`` forces (True) or forbids
        (False) the safetensors transport; ``progress`` is called with the number of
        prompts each finished batch held.
        """
        return self._run(
            self._base.hidden_states_flow(prompts, layers, pooling, dtype, binary, progress)
        )

    def mapped_hidden_states(
        self,
        prompts: Sequence[Prompt],
        map: str,
        *,
        dtype: DType = "float32",
        binary: bool | Literal["auto"] = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        """The server's map ``map`` (``--map``, written by ``lamina align fit``) applied to
        ``prompts``: their vectors in the map's target space, ``[prompts, output]`` (a
        ``[tokens, output]`` array per prompt for a map fitted with pooling ``all``). The
        server takes the layers and pooling the map was fitted on."""
        return self._run(self._base.mapped_flow(prompts, map, dtype, binary, progress))

    def close(self) -> None:
        self._http.close()
        self._base.closed()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, steps: Flow[T]) -> T:
        outcome: Reply | ConnectionFailed | None = None
        while True:
            try:
                if isinstance(outcome, ConnectionFailed):
                    step = steps.throw(outcome)
                else:
                    step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Sleep):
                self._sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = _reply(self._http.request(**self._base.request_args(step)))
            except httpx.TransportError as e:
                outcome = _no_answer(e, self.base_url, self._timeout)


class AsyncClient:
    """:class:`Client` for asyncio: the same methods, awaited (``aclose`` to close)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        retry_deadline: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_close: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._base = _Base(
            base_url,
            api_key=api_key,
            max_retries=max_retries,
            retry_deadline=retry_deadline,
            on_close=on_close,
            clock=clock,
            random=random,
        )
        self._timeout = timeout
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self._base.base_url,
            headers=self._base.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._base.base_url

    async def health(self) -> dict[str, Any]:
        return await self._run(self._base.health_flow())

    async def info(self) -> ServerInfo:
        return await self._run(self._base.info_flow())

    async def hidden_states(
        self,
        prompts: Sequence[Prompt],
        layers: int | Sequence[int] = -2,
        pooling: Pooling = "last",
        *,
        dtype: DType = "float32",
        binary: bool | Literal["auto"] = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        return await self._run(
            self._base.hidden_states_flow(prompts, layers, pooling, dtype, binary, progress)
        )

    async def mapped_hidden_states(
        self,
        prompts: Sequence[Prompt],
        map: str,
        *,
        dtype: DType = "float32",
        binary: bool | Literal["auto"] = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        return await self._run(self._base.mapped_flow(prompts, map, dtype, binary, progress))

    async def aclose(self) -> None:
        await self._http.aclose()
        self._base.closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, steps: Flow[T]) -> T:
        outcome: Reply | ConnectionFailed | None = None
        while True:
            try:
                if isinstance(outcome, ConnectionFailed):
                    step = steps.throw(outcome)
                else:
                    step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Sleep):
                await self._sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = _reply(await self._http.request(**self._base.request_args(step)))
            except httpx.TransportError as e:
                outcome = _no_answer(e, self.base_url, self._timeout)
