"""A fake Lamina server for the client tests: the HTTP contract over numpy data.

:class:`FakeServer` is an httpx handler (``httpx.MockTransport(fake)``, sync and
async) that records every request, and :func:`serve` puts it behind a real socket.
Hidden states are a deterministic function of the token ids, so tests compare the
client's arrays with :meth:`FakeServer.expected`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import lamina
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
FIELDS = {"prompts", "layers", "layer", "pooling", "dtype", "encoding_format", "map"}


def tokens(prompt: str | list[int]) -> list[int]:
    """One token per word (what a test can count by eye)."""
    if isinstance(prompt, list):
        return prompt
    return [zlib.crc32(word.encode()) % 1000 for word in prompt.split()]


def bf16_bits(values: F32) -> npt.NDArray[np.uint16]:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + ((bits >> 16) & 1) + np.uint32(0x7FFF)) >> 16).astype(np.uint16)


def rounded(values: F32, dtype: str) -> F32:
    """``values`` as the server sends them in ``dtype``, widened to float32."""
    if dtype == "bfloat16":
        return (bf16_bits(values).astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float16).astype(np.float32) if dtype == "float16" else values


def wire_bytes(values: F32, dtype: str) -> bytes:
    if dtype == "bfloat16":
        return bf16_bits(values).astype("<u2").tobytes()
    return np.ascontiguousarray(values, dtype="<f2" if dtype == "float16" else "<f4").tobytes()


def safetensors_file(tensors: dict[str, F32], dtype: str, metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name, arr in tensors.items():
        data = wire_bytes(arr, dtype)
        header[name] = {
            "dtype": ST_DTYPE[dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def error(status: int, kind: str, message: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"message": message, "type": kind, "code": status}}
    return httpx.Response(status, json=body, headers=headers)


@dataclass
class FakeMap:
    """An alignment map the fake server applies: ``concat(layers) @ weight + bias``."""

    layers: list[int]
    pooling: str
    weight: F32
    bias: F32

    def describe(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "source_model": "fake/model",
            "target_model": "fake/target",
            "layers": self.layers,
            "target_layers": [-2],
            "pooling": self.pooling,
            "method": "procrustes",
            "input_size": int(self.weight.shape[0]),
            "output_size": int(self.weight.shape[1]),
        }


@dataclass
class FakeServer:
    num_layers: int = 4
    hidden_size: int = 8
    max_prompts: int | None = 64  # None: /health publishes no limits
    max_tokens: int = 100_000
    max_response_bytes: int = 1 << 30
    api_key: str | None = None
    model: str = "fake/model"
    loading: int = 0  # answer 503 to this many /health requests first
    requests: list[httpx.Request] = field(default_factory=list)
    scripted: list[httpx.Response] = field(default_factory=list)
    maps: dict[str, FakeMap] = field(default_factory=dict)

    # -- what tests look at -----------------------------------------------------

    def states(self, prompt: str | list[int], layer: int) -> F32:
        """``[tokens, hidden]`` of ``prompt`` at ``layer`` (requested or absolute)."""
        absolute = layer % self.num_layers
        ids = np.asarray(tokens(prompt), dtype=np.float32)[:, None]
        h = np.arange(self.hidden_size, dtype=np.float32)[None, :]
        return np.sin(ids * 0.37 + absolute * 1.3 + h * 0.11).astype(np.float32)

    def expected(
        self, prompt: str | list[int], layer: int, pooling: str, dtype: str = "float32"
    ) -> F32:
        s = self.states(prompt, layer)
        pooled = s if pooling == "all" else s[-1] if pooling == "last" else s.mean(0)
        return rounded(pooled.astype(np.float32), dtype)

    def mapped(self, prompt: str | list[int], name: str, dtype: str = "float32") -> F32:
        """What map ``name`` answers for ``prompt``: ``[output]`` or ``[tokens, output]``."""
        m = self.maps[name]
        x = np.concatenate([self.expected(prompt, la, m.pooling) for la in m.layers], axis=-1)
        return rounded((x @ m.weight + m.bias).astype(np.float32), dtype)

    def batches(self) -> list[int]:
        """Prompt counts of the hidden-state requests, in order (refused ones too)."""
        return [len(json.loads(r.content)["prompts"]) for r in self.hidden_state_requests()]

    def hidden_state_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/v1/hidden_states"]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    def fail_next(
        self, count: int, status: int, *, retry_after: str | None = None, message: str = ""
    ) -> None:
        """Answer the next ``count`` hidden-state requests with ``status``."""
        kind = {429: "overloaded_error", 503: "service_unavailable"}.get(status, "engine_error")
        for _ in range(count):
            self.scripted.append(error(status, kind, message or f"scripted {status}", retry_after))

    # -- the contract -------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/health":
            return self.health()
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "authentication_error", "missing or wrong API key")
        if path != "/v1/hidden_states" or request.method != "POST":
            return error(404, "not_found_error", f"no route {request.method} {path}")
        if self.scripted:
            return self.scripted.pop(0)
        return self.hidden_states(request)

    def health(self) -> httpx.Response:
        if self.loading > 0:
            self.loading -= 1
            body = {"status": "loading", **error(503, "service_unavailable", "x").json()}
            body["error"]["message"] = "model is still loading"
            return httpx.Response(503, json=body)
        answer: dict[str, Any] = {
            "status": "healthy",
            "model": self.model,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "dtype": "float32",
            "max_model_len": 512,
        }
        if self.maps:
            answer["maps"] = [m.describe(name) for name, m in self.maps.items()]
        if self.max_prompts is not None:
            answer["limits"] = {
                "max_prompts_per_request": self.max_prompts,
                "max_tokens_per_request": self.max_tokens,
                "max_response_bytes": self.max_response_bytes,
            }
        return httpx.Response(200, json=answer)

    def hidden_states(self, request: httpx.Request) -> httpx.Response:
        req = json.loads(request.content)
        if set(req) - FIELDS:
            return error(422, "invalid_request_error", f"unknown fields {set(req) - FIELDS}")
        prompts, layers = req["prompts"], req.get("layers", [-2])
        pooling, dtype = req.get("pooling", "last"), req.get("dtype", "float32")
        fmt = req.get("encoding_format", "float")
        if "map" in req:
            return self.mapped_states(req["map"], prompts, dtype, fmt, request)
        for layer in layers:
            if not -self.num_layers <= layer < self.num_layers:
                return error(422, "invalid_request_error", f"layer {layer} is out of range")
        max_prompts = self.max_prompts or 64
        if len(prompts) > max_prompts:
            return error(413, "request_too_large", f"too many prompts: {len(prompts)}")
        for i, p in enumerate(prompts):
            if not tokens(p):
                return error(422, "invalid_request_error", f"prompts[{i}] has no tokens")
        counts = [len(tokens(p)) for p in prompts]
        if sum(counts) > self.max_tokens:
            return error(413, "request_too_large", f"too many tokens: {sum(counts)}")
        rows = sum(counts) if pooling == "all" else len(prompts)
        size = rows * len(layers) * self.hidden_size * BYTES[dtype]
        if size > self.max_response_bytes:
            return error(413, "request_too_large", f"the answer would hold {size} bytes")
        raw = {(i, L): self.expected(p, L, pooling) for i, p in enumerate(prompts) for L in layers}
        if "application/octet-stream" in request.headers.get("accept", ""):
            return self._safetensors(raw, prompts, layers, pooling, dtype, counts)
        return self._json(raw, prompts, layers, pooling, dtype, fmt, counts)

    def mapped_states(
        self, name: str, prompts: list[Any], dtype: str, fmt: str, request: httpx.Request
    ) -> httpx.Response:
        if name not in self.maps:
            return error(404, "not_found_error", f"no map {name!r} on this server")
        m = self.maps[name]
        counts = [len(tokens(p)) for p in prompts]
        rows = sum(counts) if m.pooling == "all" else len(prompts)
        width = max(len(m.layers) * self.hidden_size, int(m.weight.shape[1]))
        if rows * width * BYTES[dtype] > self.max_response_bytes:
            return error(413, "request_too_large", "the answer would be too large")
        if len(prompts) > (self.max_prompts or 64):
            return error(413, "request_too_large", f"too many prompts: {len(prompts)}")
        mapped = [self.mapped(p, name) for p in prompts]
        if "application/octet-stream" in request.headers.get("accept", ""):
            if m.pooling == "all":
                tensors = {f"prompt.{i}.mapped": v for i, v in enumerate(mapped)}
            else:
                tensors = {"mapped": np.stack(mapped)}
            body = safetensors_file(tensors, dtype, {"map": name})
            return httpx.Response(200, content=body)

        def encode(values: F32) -> Any:
            if fmt == "base64":
                return base64.b64encode(wire_bytes(values, dtype)).decode()
            return rounded(values, dtype).tolist()

        data = [
            {"index": i, "prompt_tokens": counts[i], "hidden_state": encode(v)}
            for i, v in enumerate(mapped)
        ]
        meta = {
            "num_prompts": len(prompts),
            "hidden_size": int(m.weight.shape[1]),
            "dtype": dtype,
            "pooling": m.pooling,
            "encoding_format": fmt,
        }
        return httpx.Response(
            200,
            json={
                "hidden_states": [d["hidden_state"] for d in data],
                "metadata": meta,
                "map": m.describe(name),
                "data": data,
            },
        )

    def _json(
        self,
        raw: dict[tuple[int, int], F32],
        prompts: list[Any],
        layers: list[int],
        pooling: str,
        dtype: str,
        fmt: str,
        counts: list[int],
    ) -> httpx.Response:
        def encode(values: F32) -> Any:
            if fmt == "base64":
                return base64.b64encode(wire_bytes(values, dtype)).decode()
            return rounded(values, dtype).tolist()

        data: list[dict[str, Any]] = [
            {
                "index": i,
                "prompt_tokens": counts[i],
                "layers": [
                    {
                        "layer": L,
                        "resolved_layer": L % self.num_layers,
                        "hidden_state": encode(raw[i, L]),
                    }
                    for L in layers
                ],
            }
            for i in range(len(prompts))
        ]
        meta = {
            "num_prompts": len(prompts),
            "hidden_size": self.hidden_size,
            "dtype": dtype,
            "engine_dtype": "float32",
            "num_layers": self.num_layers,
            "pooling": pooling,
            "encoding_format": fmt,
        }
        return httpx.Response(
            200,
            json={
                "hidden_states": [d["layers"][0]["hidden_state"] for d in data],
                "layer": layers[0],
                "model": self.model,
                "prompt_tokens": counts,
                "metadata": meta,
                "layers": layers,
                "resolved_layers": [L % self.num_layers for L in layers],
                "data": data,
            },
        )

    def _safetensors(
        self,
        raw: dict[tuple[int, int], F32],
        prompts: list[Any],
        layers: list[int],
        pooling: str,
        dtype: str,
        counts: list[int],
    ) -> httpx.Response:
        tensors: dict[str, F32] = {}
        for L in layers:
            if pooling == "all":
                for i in range(len(prompts)):
                    tensors[f"prompt.{i}.layer.{L}"] = raw[i, L]
            else:
                tensors[f"layer.{L}"] = np.stack([raw[i, L] for i in range(len(prompts))])
        metadata = {
            "model": self.model,
            "layers": json.dumps(layers),
            "resolved_layers": json.dumps([L % self.num_layers for L in layers]),
            "prompt_tokens": json.dumps(counts),
            "pooling": pooling,
            "hidden_size": str(self.hidden_size),
            "engine_dtype": "float32",
        }
        body = safetensors_file(tensors, dtype, metadata)
        return httpx.Response(
            200, content=body, headers={"Content-Type": "application/octet-stream"}
        )


@contextmanager
def serve(fake: FakeServer) -> Iterator[int]:
    """``fake`` on a real 127.0.0.1 port (yielded) in a thread, for subprocess-level tests."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command,
                f"http://127.0.0.1{self.path}",
                headers=dict(self.headers),
                content=self.rfile.read(length),
            )
            response = fake(request)
            response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class FakeClock:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def sync_client(fake: FakeServer, clock: FakeClock, **kwargs: Any) -> lamina.Client:
    return lamina.Client(
        "http://lamina.test",
        transport=httpx.MockTransport(fake),
        sleep=clock.sleep,
        clock=clock,
        random=lambda: 0.0,
        **kwargs,
    )


def async_client(fake: FakeServer, clock: FakeClock, **kwargs: Any) -> lamina.AsyncClient:
    return lamina.AsyncClient(
        "http://lamina.test",
        transport=httpx.MockTransport(fake),
        sleep=clock.async_sleep,
        clock=clock,
        random=lambda: 0.0,
        **kwargs,
    )


class Twin:
    """Runs a client method through :class:`lamina.Client` or :class:`lamina.AsyncClient`
    (a fresh client per call), so one test checks both."""

    def __init__(self, kind: str, fake: FakeServer, clock: FakeClock) -> None:
        self.kind, self.fake, self.clock = kind, fake, clock

    def __call__(
        self, method: str, *args: Any, client: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        if self.kind == "Client":
            with sync_client(self.fake, self.clock, **(client or {})) as c:
                return getattr(c, method)(*args, **kwargs)

        async def run() -> Any:
            async with async_client(self.fake, self.clock, **(client or {})) as c:
                return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(run())
