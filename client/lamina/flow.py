"""What the clients do, as generators that never touch the network (sans-I/O).

A flow yields :class:`Call` (send this request, send me its :class:`Reply`) or
:class:`Sleep` (wait, send me None) and returns its result. The sync and async
clients each run flows with a ten-line loop doing the real I/O, so batching, 413
splitting, retries and decoding exist once. A request that got no answer is thrown
into the flow as :class:`~lamina.errors.ConnectionFailed` at its ``yield``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .batching import ServerInfo, first_batch_size, halve, parse_health
from .errors import BadRequest, LaminaError, NotFound, ServerError, TooLarge, from_response
from .retry import RetryPolicy, next_delay
from .wire import (
    DTYPES,
    POOLINGS,
    DType,
    Pooling,
    Prompt,
    Result,
    assemble,
    decode_json,
    decode_safetensors,
    request_body,
    use_binary,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    method: Literal["GET", "POST"]
    path: str
    json: dict[str, Any] | None = None
    binary: bool = False  # ask for a safetensors answer


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None = None


Flow = Generator[Call | Sleep, Reply | None, T]


@dataclass(frozen=True)
class Clocks:
    """Time and chance, injected so tests neither sleep nor depend on luck."""

    monotonic: Callable[[], float]
    wall: Callable[[], float]  # epoch seconds, for Retry-After dates
    random: Callable[[], float]


def send_once(call: Call) -> Flow[Reply]:
    """One attempt: the reply when it is a success, else its typed error."""
    reply = yield call
    assert reply is not None
    if reply.status >= 400:
        raise from_response(reply.status, reply.body, reply.retry_after)
    return reply


def send_with_retries(call: Call, policy: RetryPolicy, clocks: Clocks) -> Flow[Reply]:
    """:func:`send_once` until it succeeds, the error is not worth retrying, or the
    policy's attempts or deadline run out (then the last error, with ``attempts``)."""
    started = clocks.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return (yield from send_once(call))
        except LaminaError as e:
            error = e
        delay = next_delay(
            error,
            attempt,
            clocks.monotonic() - started,
            policy,
            rand=clocks.random(),
            now=clocks.wall(),
        )
        if delay is None:
            error.attempts = attempt
            raise error
        yield Sleep(delay)


def health(call: Callable[[Call], Flow[Reply]]) -> Flow[dict[str, Any]]:
    reply = yield from call(Call("GET", "/health"))
    try:
        answer = json.loads(reply.body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        text = reply.body[:200].decode("utf-8", "replace")
        raise ServerError(
            f"GET /health answered {text!r}, not a JSON object",
            status=reply.status,
            hint="check that the URL is a Lamina server's",
        )
    return answer


def server_info(call: Callable[[Call], Flow[Reply]]) -> Flow[ServerInfo]:
    return parse_health((yield from health(call)))


def check_arguments(
    prompts: Sequence[Prompt], layers: int | Sequence[int], pooling: str, dtype: str
) -> int | list[int]:
    """Mistakes the caller can fix before anything is sent (ValueError/TypeError); the
    layers as plain ints (numpy integers are welcome)."""
    if isinstance(prompts, str | bytes):
        raise TypeError("prompts must be a list of strings (or token-id lists): wrap it in [...]")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    wrong = f"layers must be an int or a non-empty list of ints, not {layers!r}"
    layer_spec: int | list[int]
    if isinstance(layers, Iterable):
        try:  # operator.index: numpy integers too, not floats
            layer_spec = [operator.index(x) for x in layers]
        except TypeError:
            layer_spec = []
        if not layer_spec:
            raise TypeError(wrong)
    else:
        try:
            layer_spec = operator.index(layers)
        except TypeError:
            raise TypeError(wrong) from None
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return layer_spec


@dataclass(frozen=True)
class Ask:
    """What each prompt's answer holds and how to ask for it: layers, or a server map."""

    layers: list[int]  # requested ([] when the server's map chooses them)
    map_name: str | None
    names: list[str]  # tensors of a safetensors answer, one per "layer" of the answer
    width: int  # values per name
    budget: int  # values per prompt the server's byte limit counts
    pooling: Pooling
    single: bool  # no layers axis in the caller's arrays


def ask_layers(info: ServerInfo, layers: int | Sequence[int], pooling: Pooling) -> Ask:
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    return Ask(
        layers=layer_list,
        map_name=None,
        names=[f"layer.{layer}" for layer in layer_list],
        width=info.hidden_size,
        budget=len(layer_list) * info.hidden_size,
        pooling=pooling,
        single=isinstance(layers, int),
    )


def ask_map(info: ServerInfo, name: str) -> Ask:
    """The server applies map ``name`` (as ``/health`` lists it) to its own layers."""
    served = info.maps.get(name)
    if served is None:
        loaded = ", ".join(sorted(info.maps)) or "none"
        raise NotFound(
            f"no map {name!r} on this server; loaded maps: {loaded}",
            hint="the server loads maps at start: --map NAME=PATH (or LAMINA_MAP)",
        )
    pooling = next((p for p in POOLINGS if p == served.pooling), None)
    if pooling is None:
        raise ServerError(f"map {name!r} has pooling {served.pooling!r}, unknown to this client")
    return Ask(
        layers=[],
        map_name=name,
        names=["mapped"],
        width=served.output_size,
        # The server extracts the map's layers, then answers its output: both count.
        budget=max(len(served.layers) * info.hidden_size, served.output_size),
        pooling=pooling,
        single=True,
    )


def hidden_states(
    call: Callable[[Call], Flow[Reply]],
    info: ServerInfo,
    prompts: Sequence[Prompt],
    ask: Ask,
    dtype: DType,
    binary: bool | Literal["auto"],
    progress: Callable[[int], None] | None,
) -> Flow[Result]:
    """Batches in prompt order; a batch refused as too large (413) is halved and sent
    again; the batches' answers are put together in the caller's shape."""
    binary = use_binary(
        binary,
        num_prompts=len(prompts),
        num_layers=len(ask.names),
        hidden_size=ask.width,
        pooling=ask.pooling,
        dtype=dtype,
    )
    size = first_batch_size(info, 1, ask.pooling, dtype, width=ask.budget)
    per_prompt = []
    start = 0
    while start < len(prompts):
        batch = prompts[start : start + size]
        body = request_body(batch, ask.layers, ask.pooling, dtype, ask.map_name)
        try:
            reply = yield from call(Call("POST", "/v1/hidden_states", body, binary))
        except TooLarge as e:
            smaller = halve(len(batch))
            if smaller is None:
                raise _locate(e, start, 1, len(prompts)) from None
            size = smaller
            continue
        except BadRequest as e:
            raise _locate(e, start, len(batch), len(prompts)) from None
        if binary:
            per_prompt += decode_safetensors(reply.body, ask.names, len(batch), ask.pooling)
        else:
            per_prompt += decode_json(reply.body, len(ask.names))
        start += len(batch)
        if progress is not None:
            progress(len(batch))
    return assemble(per_prompt, ask.single, ask.pooling)


def _locate(error: LaminaError, start: int, count: int, total: int) -> LaminaError:
    """The server counts prompts within its request; say which of the caller's they were."""
    if count < total:
        where = f"prompts[{start}]" if count == 1 else f"prompts[{start}:{start + count}]"
        error.message = f"in the request for {where}: {error.message}"
    return error
