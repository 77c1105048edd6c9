"""HTTP layer: Lamina's routes and one ASGI middleware (auth, admission, metrics).

Pure FastAPI/Starlette: the routes reach the engine only through
:class:`~lamina_server.service.HiddenStateService`. :func:`install` adds them to
vLLM's own OpenAI app (replacing vLLM's ``/health`` and ``/v1/embeddings``);
:func:`create_app` builds a stand-alone app (unit tests).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import LaminaSettings
from .errors import (
    ErrorType,
    LaminaError,
    draining,
    engine_failure,
    error_body,
    loading,
    normalized_error,
    too_large,
)
from .http_protocol import CONNECTION_REQUESTS
from .limits import Admission, ParseLane, json_problem
from .maps import LoadedMap
from .metrics import Metrics, route_label
from .protocol import EmbeddingsRequest, Health, HiddenStatesRequest, Limits, MapInfo
from .service import HiddenStateService, ModelFacts, Plan, dumps_json
from .worker import in_worker

log = logging.getLogger("lamina_server")

OPEN_PATHS = frozenset({"/health", "/healthz", "/readyz", "/metrics", "/metrics/"})
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
# Bodies from this size on are parsed one at a time (see ParseLane): well under a
# millisecond of parsing below it.
PARSE_LANE_BYTES = 16 << 10
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Extracted = TypeVar("Extracted")  # what a route's plan extracted, before rendering


@dataclass
class ServerState:
    """Everything the routes and the middleware share."""

    settings: LaminaSettings
    metrics: Metrics
    admission: Admission
    service: HiddenStateService | None = None
    ready: bool = False
    lane: ParseLane = field(default_factory=lambda: ParseLane(PARSE_LANE_BYTES))

    @property
    def facts(self) -> ModelFacts | None:
        return self.service.facts if self.service else None


def error_response(err: LaminaError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid request: " + "; ".join(parts)


def parse_body(model: type[M], body: bytes) -> M:
    """``body`` as ``model``; malformed JSON, wrong types and unknown fields are 422."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise LaminaError(ErrorType.INVALID_REQUEST, validation_message(e)) from None


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; cancel it (and so abort the engine's requests) if the client goes.

    The body must have been read already: this consumes the request's messages.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # the middleware logs the disconnect
    if task.cancelled():
        return None
    return task.result()


def json_bytes(render: Callable[..., Any], *args: Any) -> bytes:
    """``render(*args)`` serialised (called on the worker thread)."""
    return dumps_json(render(*args))


def health_answer(
    status: Literal["healthy", "loading", "draining"],
    facts: ModelFacts,
    settings: LaminaSettings,
    maps: Iterable[LoadedMap] = (),
) -> Health:
    return Health(
        status=status,
        model=facts.name,
        num_layers=facts.num_layers,
        hidden_size=facts.hidden_size,
        max_model_len=facts.max_model_len,
        dtype=facts.dtype,
        device=facts.device,
        gpu=facts.accelerator,
        memory=f"{facts.weights_bytes / 1e9:.2f}GB",
        weights_bytes=facts.weights_bytes,
        limits=Limits(
            max_prompts_per_request=settings.max_prompts_per_request,
            max_tokens_per_request=settings.max_tokens_per_request,
            max_response_bytes=settings.max_response_bytes,
        ),
        maps=[MapInfo(**m.describe()) for m in maps],
    )


def _service(state: ServerState) -> HiddenStateService:
    if state.service is None or not state.ready:
        raise loading()
    return state.service


async def _answer(
    plan: Plan,
    extracted: Extracted | None,
    as_json: Callable[[Plan, Extracted], Any],
    as_safetensors: Callable[[Plan, Extracted], bytes] | None = None,
) -> Response:
    """The answer to a client still there (``extracted`` None: it went away): safetensors
    when ``as_safetensors`` is given (the client asked for it), else JSON; rendered on the
    worker thread in short C calls, so that probes keep their turn."""
    if extracted is None:
        return Response(status_code=CLIENT_GONE)
    if as_safetensors is not None:
        return Response(await in_worker(as_safetensors, plan, extracted), media_type=OCTET_STREAM)
    return Response(await in_worker(json_bytes, as_json, plan, extracted), media_type=JSON)


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    async def guarded(call: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await call()
        except LaminaError as e:
            return error_response(e)
        except ClientDisconnect:  # not an error of ours: the middleware counts it (499)
            return Response(status_code=CLIENT_GONE)
        except Exception as e:
            return error_response(engine_failure(e))

    @router.post(
        "/v1/hidden_states",
        responses={404: {}, 413: {}, 422: {}, 429: {}, 503: {}, 500: {}},
        summary="Hidden states (residual stream) of chosen layers for given prompts",
    )
    async def hidden_states(request: Request) -> Response:
        async def handle() -> Response:
            req = parse_body(HiddenStatesRequest, await request.body())
            service = _service(state)
            plan = await in_worker(service.plan_hidden_states, req)
            binary = OCTET_STREAM in request.headers.get("accept", "")
            if plan.map is not None:
                mapped = await cancel_on_disconnect(request, service.run_mapped(plan))
                as_binary = service.render_mapped_safetensors if binary else None
                return await _answer(plan, mapped, service.render_mapped_json, as_binary)
            results = await cancel_on_disconnect(request, service.run(plan))
            as_safetensors = service.render_safetensors if binary else None
            return await _answer(plan, results, service.render_json, as_safetensors)

        return await guarded(handle)

    @router.post(
        "/v1/embeddings",
        responses={413: {}, 422: {}, 429: {}, 503: {}, 500: {}},
        summary="OpenAI embeddings: a pooled hidden state of one layer",
    )
    async def embeddings(request: Request) -> Response:
        async def handle() -> Response:
            req = parse_body(EmbeddingsRequest, await request.body())
            service = _service(state)
            plan = await in_worker(service.plan_embeddings, req)
            results = await cancel_on_disconnect(request, service.run(plan))
            return await _answer(plan, results, service.render_embeddings)

        return await guarded(handle)

    @router.get("/health", response_model=Health, responses={503: {}})
    async def health() -> Response:
        """The model, the engine's dtype and device, and the request limits; 200 only
        when requests are being served."""
        facts = state.facts
        if facts is None:
            return JSONResponse({"status": "loading", **loading().body()}, status_code=503)
        status: Literal["healthy", "loading", "draining"] = (
            "draining" if state.admission.draining else "healthy" if state.ready else "loading"
        )
        maps = state.service.maps.values() if state.service else ()
        answer = health_answer(status, facts, state.settings, maps)
        return JSONResponse(answer.model_dump(), status_code=200 if status == "healthy" else 503)

    @router.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the engine answers."""
        if state.service is not None:
            try:
                await state.service.engine.check_health()
            except Exception as e:
                return JSONResponse(
                    error_body(ErrorType.ENGINE, f"engine is not healthy: {e}"), status_code=503
                )
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> Response:
        """Readiness: model loaded and warm, and not draining."""
        if state.admission.draining:
            return error_response(draining())
        if not state.ready:
            return error_response(loading())
        return JSONResponse({"status": "ready"})

    return router


# The routes served (DESIGN.md's contract) and their methods. vLLM's app has more
# (/tokenize, /v1/responses, /v1/messages, /scale_elastic_ep, ...), each with its own
# costly inputs to harden: they are not served (404 before any body is read).
_GET, _POST = frozenset({"GET", "OPTIONS"}), frozenset({"POST", "OPTIONS"})
ROUTES: dict[str, frozenset[str]] = {
    "/v1/hidden_states": _POST,
    "/v1/embeddings": _POST,
    "/v1/completions": _POST,
    "/v1/chat/completions": _POST,
    "/v1/models": _GET,
    "/health": _GET,
    "/healthz": _GET,
    "/readyz": _GET,
    "/metrics": _GET,
    "/metrics/": _GET,
}


def head_problem(scope: Scope, max_bytes: int) -> LaminaError | None:
    """431 for a request line and headers over ``max_bytes``. h11 checks this only
    while the head is incomplete: one that arrives whole in one socket read (up to
    256 KiB) would pass it."""
    size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    size += sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
    if size <= max_bytes:
        return None
    return LaminaError(
        ErrorType.HEADERS_TOO_LARGE,
        f"request line and headers of about {size} bytes are over the {max_bytes}-byte limit",
    )


def route_problem(method: str, path: str) -> LaminaError | None:
    """404 for a path that is not served, 405 for a method a route does not take."""
    methods = ROUTES.get(path)
    if methods is None:
        return LaminaError(ErrorType.NOT_FOUND, f"no route {path[:200]}")
    if method not in methods:
        return LaminaError(
            ErrorType.METHOD_NOT_ALLOWED,
            f"{path} takes {' or '.join(sorted(methods - {'OPTIONS'}))}, not {method[:20]}",
            allow=", ".join(sorted(methods)),
        )
    return None


CLOSE = (b"connection", b"close")
# nginx's code for "client closed the request": how a disconnect is counted in
# lamina_requests_total (not as a 500).
CLIENT_GONE = 499
# Bodies above this are scanned off the event loop (a few ms of scanning at most
# inline; probes keep answering).
SCAN_IN_THREAD_BYTES = 16 << 10
ENGINE_DTYPE_HEADER = b"x-lamina-engine-dtype"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, refused (413) past ``limit`` bytes before more is read;
    None when the client went away first."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive, lane: ParseLane) -> Receive:
    """``receive`` that first gives ``body`` whole (through ``lane``, as it is parsed
    right after), then the client's next messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            await lane.enter(body)
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def check_body(scope: Scope, receive: Receive, settings: LaminaSettings) -> bytes | None:
    """The body, within the size limit and cheap to parse; None on disconnect. Every
    body is scanned, whatever its content type: every route that takes one parses it
    as JSON (Lamina's whatever the type, as ``curl -d`` sends form-encoded)."""
    body = await read_body(scope, receive, settings.max_body_bytes)
    if body is None:
        return body
    args = (body, settings.max_json_depth, settings.max_json_array_items, settings.max_json_values)
    if len(body) > SCAN_IN_THREAD_BYTES:
        problem = await in_worker(json_problem, *args)
    else:
        problem = json_problem(*args)
    if problem is not None:
        raise problem
    return body


class _Exchange:
    """One request as it passes through the middleware: notices a client that goes
    away, and rewrites the answer on its way out (every 4xx into the one error
    envelope, ``Connection: close`` while draining or when the connection has served
    its share, the engine's dtype on /v1/)."""

    def __init__(self, receive: Receive, send: Send, state: ServerState, scope: Scope) -> None:
        self._receive, self._send = receive, send
        self._state, self._path = state, str(scope["path"])
        self._last_on_connection = last_on_connection(scope, state.settings)
        self.status = 500
        self.responded = False
        self.disconnected = False
        self.refusal = b""  # a 4xx answer's body, for the log
        self._held: Message | None = None  # a 4xx answer's start, until its body is known
        self._error_chunks: list[bytes] = []

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self._held is not None:
            await self._send_error_body(message)
            return
        if message["type"] == "http.response.start":
            message = self._start(message)
            if 400 <= self.status < 500:  # client errors (503s of /health carry facts)
                self._held = message
                return
        await self._send(message)

    async def reject(self, err: LaminaError) -> None:
        await error_response(err)({"type": "http"}, _no_receive, self.send)

    def _start(self, message: Message) -> Message:
        self.status = int(message["status"])
        self.responded = True
        extra = []
        if self._state.admission.draining or self._last_on_connection:
            # Move keep-alive clients to another pod (uvicorn closes after this).
            extra.append(CLOSE)
        facts = self._state.facts
        if self._path.startswith("/v1/") and facts is not None:
            # Every answer says what the engine computed in (OpenAI shapes have no
            # field for it).
            extra.append((ENGINE_DTYPE_HEADER, facts.dtype.encode()))
        if not extra:
            return message
        return {**message, "headers": [*message.get("headers", []), *extra]}

    async def _send_error_body(self, message: Message) -> None:
        assert self._held is not None
        self._error_chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        payload = self.refusal = normalized_error(self.status, b"".join(self._error_chunks))
        kept = [
            (k, v)
            for k, v in self._held.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        kept += [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        await self._send({**self._held, "headers": kept})
        await self._send({"type": "http.response.body", "body": payload})


def last_on_connection(scope: Scope, settings: LaminaSettings) -> bool:
    """Whether this request's answer is the last its keep-alive connection gets: kube-proxy
    balances connections, not requests, so a client that never reconnects would never
    reach a replica added after it connected."""
    number = scope.get("extensions", {}).get(CONNECTION_REQUESTS, 0)
    return bool(number >= settings.max_requests_per_connection)


def _needs_admission(path: str) -> bool:
    return path.startswith("/v1/") and path != "/v1/models"


class LaminaMiddleware:
    """Bearer auth, body limits, admission control on ``/v1/*``, request metrics, and
    every error answer in the one envelope (whoever made it)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(receive, send, self.state, scope)
        try:
            await self._serve(scope, exchange)
        except Exception:
            if not exchange.disconnected:
                raise
            # Whatever failed, failed for a client that is gone: counted and logged below.
        finally:
            self._record(scope, exchange, started)

    async def _serve(self, scope: Scope, exchange: _Exchange) -> None:
        """The checks, then the app; an admitted request is released after."""
        admission = self.state.admission
        try:
            app_receive = await self._checked_request(scope, exchange)
            if app_receive is None:
                return  # the client went away while sending the body
            admitted = _needs_admission(scope["path"])
            if admitted:
                admission.admit()
        except LaminaError as e:
            await exchange.reject(e)
            return
        if not admitted:
            await self.app(scope, app_receive, exchange.send)
            return
        self.state.metrics.in_flight.inc()
        try:
            await self.app(scope, app_receive, exchange.send)
        finally:
            admission.release()
            self.state.metrics.in_flight.dec()

    async def _checked_request(self, scope: Scope, exchange: _Exchange) -> Receive | None:
        """Raises the first problem: the API key (401), the head's size (431), the
        route (404, 405), the body (413, 400). Returns what the app reads the body
        from; None when the client went away first."""
        settings = self.state.settings
        key = settings.api_key
        if key and scope["path"] not in OPEN_PATHS and not _authorized(scope, key):
            raise LaminaError(ErrorType.UNAUTHORIZED, "missing or wrong API key")
        problem = head_problem(scope, settings.max_header_bytes) or route_problem(
            scope["method"], scope["path"]
        )
        if problem is not None:
            raise problem
        if scope["method"] != "POST":
            return exchange.receive
        # Read and checked here, once, for every route (vLLM's too), so no parser
        # behind sees a body over the limits.
        body = await check_body(scope, exchange.receive, settings)
        if body is None:
            return None
        return replay_body(body, exchange.receive, self.state.lane)

    def _record(self, scope: Scope, exchange: _Exchange, started: float) -> None:
        """Count and time the request; log a refusal or a client that went away."""
        method, path = scope["method"], scope["path"]
        code = str(CLIENT_GONE) if exchange.disconnected else str(exchange.status)
        if exchange.disconnected:
            log.info("client disconnected: %s %s (counted as %s)", method, path, code)
        elif exchange.refusal:
            log.info("refused %s %s: %s", method, path[:200], refusal_summary(exchange.refusal))
        metrics = self.state.metrics
        metrics.requests.labels(route_label(path), code).inc()
        metrics.duration.labels(route_label(path)).observe(time.perf_counter() - started)


def refusal_summary(payload: bytes) -> str:
    """``413 request_too_large: <message>`` of an error envelope (the message cut short)."""
    error = json.loads(payload)["error"]
    return f"{error['code']} {error['type']}: {str(error['message'])[:300]}"


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _authorized(scope: Scope, key: str) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            given = value.decode("latin-1")
            scheme, _, token = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), key.encode()
            )
    return False


def install(app: FastAPI, state: ServerState) -> None:
    """Add Lamina's routes, taking precedence over vLLM's at the same path+method.

    The middleware is applied by wrapping the finished app (:class:`LaminaMiddleware`)
    because vLLM's app may already have built its middleware stack.
    """
    router = build_router(state)
    ours = {(r.path, m) for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    kept = [
        r
        for r in app.router.routes
        if not (isinstance(r, APIRoute) and any((r.path, m) in ours for m in r.methods))
    ]
    app.router.routes[:] = list(router.routes) + kept
    app.openapi_schema = None
    app.state.lamina = state


def create_app(state: ServerState, *, metrics_registry: Any = None) -> FastAPI:
    """A stand-alone app with Lamina's routes and ``/metrics`` (no vLLM routes)."""
    from prometheus_client import make_asgi_app

    app = FastAPI()
    install(app, state)
    app.add_middleware(LaminaMiddleware, state=state)
    if metrics_registry is not None:
        app.mount("/metrics", make_asgi_app(registry=metrics_registry))
    return app
