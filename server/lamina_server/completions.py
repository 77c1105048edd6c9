"""``output_hidden_states`` on ``POST /v1/completions`` and ``/v1/chat/completions``
(an ASGI wrapper, no vLLM).

A completion request may carry ``"output_hidden_states": true`` or an object with the
``/v1/hidden_states`` options (``layers``/``layer``, ``pooling``, ``encoding_format``,
``dtype``). The field is removed before vLLM sees the request; the hidden states of
the *prompt* tokens are extracted alongside the completion and returned in the
response under ``"hidden_states"`` (the ``/v1/hidden_states`` response object).
For chat, the prompt is the conversation rendered with the model's chat template
(generation prompt included), tokenized as vLLM does; text messages only.
Streaming is refused (422): the states would arrive after the last chunk.
Requests without the field pass through untouched (the body is only peeked at).

Legacy shape (the seed TypeScript client, ``001_…`` §3.2): ``"output_hidden_states":
true`` with ``"hidden_state_layer": L`` answers ``"hidden_states"`` as one vector, the
last prompt token's state at layer ``L`` (a list of them for a list of prompts), with
``"hidden_states_metadata"`` beside it. ``hidden_state_layer`` without hidden states
asked for is dropped (that client always sends it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import ServerState, error_response, read_body, replay_body, validation_message
from .errors import LaminaError, engine_failure, invalid, loading
from .openai_checks import CHAT, completion_problem
from .protocol import HiddenStatesRequest
from .service import F32, HiddenStateService, Plan, dumps_json
from .worker import in_worker

FIELD = "output_hidden_states"
LEGACY_LAYER = "hidden_state_layer"
_OPTIONS = {"layers", "layer", "pooling", "encoding_format", "dtype"}
PATHS = ("/v1/completions", CHAT)


def _prompts(prompt: Any) -> list[Any]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list):
        return prompt
    raise invalid("output_hidden_states needs 'prompt' as text, token ids, or a list of them")


def hidden_states_request(
    body: dict[str, Any], option: Any, chat_tokens: list[int] | None = None
) -> HiddenStatesRequest:
    """The ``/v1/hidden_states`` request equivalent to a completion's option
    (for chat, ``chat_tokens`` is the rendered conversation)."""
    if option is True:
        options: dict[str, Any] = {}
    elif isinstance(option, dict) and set(option) <= _OPTIONS:
        options = dict(option)
    else:
        raise invalid(
            f"{FIELD} must be true or an object with keys {sorted(_OPTIONS)}; got {option!r}"
        )
    if body.get("stream"):
        raise invalid(f"{FIELD} is not supported with stream=true")
    try:
        prompts = [chat_tokens] if chat_tokens is not None else _prompts(body.get("prompt"))
        return HiddenStatesRequest.model_validate({"prompts": prompts, **options})
    except ValidationError as e:
        raise invalid(f"{FIELD}: {validation_message(e)}") from None


def plan_for(service: HiddenStateService, path: str, body: dict[str, Any], option: Any) -> Plan:
    """The hidden-state plan of a completion (for chat, of its rendered conversation):
    tokenizing and templating (on the worker thread)."""
    chat_tokens = None
    if path == CHAT:
        chat_tokens = service.chat_tokens(
            body.get("messages"), bool(body.get("add_special_tokens", False))
        )
    return service.plan_hidden_states(hidden_states_request(body, option, chat_tokens))


def merged_answer(
    service: HiddenStateService,
    plan: Plan,
    results: list[dict[int, F32]],
    completion: bytes,
    legacy: bool,
    single: bool,
) -> bytes:
    """vLLM's completion answer with the hidden states in it (on the worker thread)."""
    merged = json.loads(completion)  # vLLM's JSON may spell -Infinity (orjson refuses it)
    rendered = service.render_json(plan, results)
    if not legacy:
        merged["hidden_states"] = rendered
    else:
        vectors = rendered["hidden_states"]
        merged["hidden_states"] = vectors[0] if single else vectors
        merged["hidden_states_metadata"] = rendered["metadata"]
    return dumps_json(merged)


def legacy_option(option: Any, layer: Any) -> dict[str, Any]:
    """The options meant by ``output_hidden_states: true`` + ``hidden_state_layer``."""
    if option is not True:
        raise invalid(
            f"{LEGACY_LAYER} goes with {FIELD}: true; with an object, name the layer "
            "inside it ('layers' or 'layer')"
        )
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise invalid(f"{LEGACY_LAYER} must be an integer layer index; got {layer!r}")
    return {"layers": [layer], "pooling": "last"}


class CompletionsHiddenStates:
    """Wraps the app; handles ``output_hidden_states`` on completions and chat."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["path"] in PATHS and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            # The middleware has checked the body's size and shape already.
            raw = await read_body(scope, receive, self.state.settings.max_body_bytes)
            if raw is None:
                return  # the client went away before sending the body
            body = self._parsed(path, raw)
        except LaminaError as e:
            await error_response(e)(scope, receive, send)
            return
        if not isinstance(body, dict) or not ({FIELD, LEGACY_LAYER} & body.keys()):
            await self.app(scope, replay_body(raw, receive, self.state.lane), send)
            return
        option = body.pop(FIELD, None)
        legacy_layer = body.pop(LEGACY_LAYER, None)
        forward = replay_body(orjson.dumps(body), receive, self.state.lane)
        if option is False or option is None:
            await self.app(scope, forward, send)
            return
        try:
            if legacy_layer is not None:
                option = legacy_option(option, legacy_layer)
            service, plan = await self._plan(path, body, option)
            start, payload, results = await self._complete(scope, forward, service, plan)
        except LaminaError as e:
            await error_response(e)(scope, receive, send)
            return
        if start["status"] == 200:
            single = isinstance(body.get("prompt"), str) or path == CHAT
            args = (service, plan, results, payload, legacy_layer is not None, single)
            payload = await in_worker(merged_answer, *args)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _parsed(self, path: str, raw: bytes) -> Any:
        """The request's JSON, or the client error it is."""
        # orjson, not json: it refuses lone surrogates (text no tokenizer takes), NaN
        # and deep nesting with a ValueError instead of a RecursionError. The body is
        # within the middleware's limits, so this parse is short.
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise invalid(f"invalid JSON: {e}") from None
        problem = completion_problem(path, body, self.state.settings)
        if problem is not None:
            raise problem
        return body

    async def _plan(
        self, path: str, body: dict[str, Any], option: Any
    ) -> tuple[HiddenStateService, Plan]:
        service = self.state.service
        if service is None or not self.state.ready:
            raise loading()
        if path == CHAT and body.get("stream"):
            raise invalid(f"{FIELD} is not supported with stream=true")
        return service, await in_worker(plan_for, service, path, body, option)

    async def _complete(
        self, scope: Scope, receive: Receive, service: HiddenStateService, plan: Plan
    ) -> tuple[Message, bytes, list[dict[int, F32]]]:
        """vLLM's answer (kept, not sent) and the hidden states, computed side by side."""
        start: Message = {"status": 500, "headers": []}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            _, results = await asyncio.gather(self.app(scope, receive, keep), service.run(plan))
        except LaminaError:
            raise
        except Exception as e:
            raise engine_failure(e) from None
        return start, b"".join(chunks), results
