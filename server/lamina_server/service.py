"""The hidden-state service: validation, budgets, extraction, rendering (no vLLM).

It talks to the engine through :class:`HiddenStateEngine`, implemented over vLLM in
``engine.py`` and by a fake in the unit tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from .config import LaminaSettings, Pooling
from .encoding import BYTES_PER_VALUE, DType, EncodingFormat, encode_array, safetensors_bytes
from .errors import ErrorType, LaminaError, invalid, too_large
from .layers import resolve_layers
from .limits import response_bytes
from .maps import LoadedMap
from .metrics import Metrics
from .protocol import (
    EmbeddingsRequest,
    HiddenStatesRequest,
)

F32 = npt.NDArray[np.float32]


def _array_bytes(array: npt.NDArray[Any]) -> bytes:
    """A numpy array's JSON, a row at a time: many short C calls instead of one long
    one, so a big answer rendered in a thread leaves the event loop its turns."""
    if array.ndim < 2:
        return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"[" + b",".join(_array_bytes(row) for row in array) + b"]"


def _array_fragment(value: Any) -> orjson.Fragment:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot serialise {type(value).__name__}")
    return orjson.Fragment(_array_bytes(value))


def dumps_json(obj: Any) -> bytes:
    """Compact JSON of a rendered response (numpy arrays serialised by orjson, without
    building Python float lists; they parse to exactly the numbers ``json.dumps`` gave
    for those lists)."""
    return orjson.dumps(obj, default=_array_fragment)


@dataclass(frozen=True)
class ModelFacts:
    """What clients (and /health) learn about the served model."""

    name: str
    num_layers: int
    hidden_size: int
    max_model_len: int
    vocab_size: int
    max_chars_per_token: int  # the longest vocabulary entry: text longer than
    # max_model_len x this cannot fit the context, whatever it tokenizes to
    dtype: str  # what the engine computes in (float32, bfloat16, ...)
    device: str  # cpu, cuda, ...
    accelerator: str | None  # the GPU's name; None on CPU
    weights_bytes: int  # the model's parameters in the engine, all ranks


class HiddenStateEngine(Protocol):
    """What the service needs from an engine."""

    facts: ModelFacts

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` as the model's tokenizer gives them. Called on the
        worker thread only (:mod:`~lamina_server.worker`)."""
        ...

    def chat_text(self, messages: Any) -> str:
        """A chat conversation rendered for generation (the chat template with the
        generation prompt). Raises a 422 LaminaError when ``messages`` cannot be
        rendered. Called on the worker thread only."""
        ...

    async def extract(
        self, prompts: Sequence[Sequence[int]], layers: Sequence[int], pooling: Pooling
    ) -> list[dict[int, F32]]:
        """Per prompt, absolute layer -> ``[hidden]`` (last/mean) or ``[tokens, hidden]``.

        Cancelling the call aborts the engine's work.
        """
        ...

    async def check_health(self) -> None:
        """Raise if the engine is dead."""
        ...


def check_text(text: str, where: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate from a JSON ``\\ud800``
    escape): tokenizers fail on it with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise invalid(f"{where} is not valid Unicode text: {e.reason} at {e.start}") from None


@dataclass(frozen=True)
class Plan:
    """A validated request: everything needed to run and render it."""

    token_ids: list[list[int]]
    layers: list[int]  # as requested
    resolved: list[int]  # absolute
    pooling: Pooling
    encoding_format: EncodingFormat
    dtype: DType
    map: LoadedMap | None = None  # the answer is this map applied to ``layers``

    @property
    def prompt_tokens(self) -> list[int]:
        return [len(t) for t in self.token_ids]


class HiddenStateService:
    """Validates, budgets, runs and renders hidden-state and embedding requests.

    Planning (tokenizing, templating, checking token ids) and rendering are CPU work
    that grows with the input: callers run them with :func:`~lamina_server.worker.in_worker`."""

    def __init__(
        self,
        engine: HiddenStateEngine,
        settings: LaminaSettings,
        metrics: Metrics,
        maps: Mapping[str, LoadedMap] | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.maps = dict(maps or {})

    @property
    def facts(self) -> ModelFacts:
        return self.engine.facts

    # -- validation --------------------------------------------------------------

    def _tokens(self, prompts: Sequence[str | list[int]]) -> list[list[int]]:
        s, facts = self.settings, self.facts
        if len(prompts) > s.max_prompts_per_request:
            raise too_large(
                f"too many prompts: {len(prompts)} > {s.max_prompts_per_request} per request"
            )
        chars = sum(len(p) for p in prompts if isinstance(p, str))
        if chars > s.max_prompt_chars:
            raise too_large(f"too much text: {chars} characters > {s.max_prompt_chars} per request")
        out: list[list[int]] = []
        total = 0
        # The engine needs room for the one token it samples after the prompt.
        limit = facts.max_model_len - 1
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                self._check_text(i, p)
                ids = self.engine.tokenize(p)
            else:
                if len(p) > limit:  # before looking at each id
                    raise self._too_long(i, f"{len(p)} tokens")
                bad = [t for t in p if not 0 <= t < facts.vocab_size]
                if bad:
                    raise invalid(
                        f"prompts[{i}]: token id {bad[0]} is outside the vocabulary "
                        f"(0..{facts.vocab_size - 1})"
                    )
                ids = list(p)
            if not ids:
                raise invalid(f"prompts[{i}] has no tokens")
            if len(ids) > limit:
                raise self._too_long(i, f"{len(ids)} tokens")
            total += len(ids)
            if total > s.max_tokens_per_request:
                raise too_large(
                    f"too many tokens: more than {s.max_tokens_per_request} prompt tokens "
                    "per request"
                )
            out.append(ids)
        return out

    def _check_text(self, i: int, text: str) -> None:
        """Valid Unicode and not longer than the context in characters alone (the
        longest vocabulary entry bounds the characters per token), before tokenizing."""
        check_text(text, f"prompts[{i}]")
        fewest = -(-len(text) // self.facts.max_chars_per_token)
        if fewest > self.facts.max_model_len - 1:
            raise self._too_long(i, f"{len(text)} characters (at least {fewest} tokens)")

    def chat_tokens(self, messages: Any, add_special_tokens: bool) -> list[int]:
        """Token ids of a chat conversation as vLLM's chat API makes them: rendered to
        text, then tokenized with specials only when asked (the template carries any
        BOS itself)."""
        text = self.engine.chat_text(messages)
        self._check_text(0, text)
        return self.engine.tokenize(text, add_special_tokens)

    def _too_long(self, i: int, size: str) -> LaminaError:
        max_len = self.facts.max_model_len
        return invalid(
            f"prompts[{i}] has {size}, longer than the model's context "
            f"({max_len - 1} prompt tokens at most, max_model_len={max_len})"
        )

    def _check_bytes(self, plan: Plan) -> None:
        def size_of(num_layers: int, hidden_size: int) -> int:
            return response_bytes(
                total_tokens=sum(plan.prompt_tokens),
                num_prompts=len(plan.token_ids),
                num_layers=num_layers,
                hidden_size=hidden_size,
                dtype=plan.dtype,
                pooling=plan.pooling,
            )

        size = size_of(len(plan.layers), self.facts.hidden_size)
        if plan.map is not None:  # the extracted layers, or the mapped answer if larger
            size = max(size, size_of(1, plan.map.output_size))
        if size > self.settings.max_response_bytes:
            raise too_large(
                f"the answer would hold {size} bytes of hidden states, over the "
                f"{self.settings.max_response_bytes}-byte limit; ask for fewer prompts, "
                "layers or tokens, a pooled answer, or a 2-byte dtype"
            )

    def _map(self, name: str) -> LoadedMap:
        if name not in self.maps:
            loaded = ", ".join(sorted(self.maps)) or "none (start the server with --map NAME=PATH)"
            raise LaminaError(
                ErrorType.NOT_FOUND, f"no map {name!r} on this server; loaded maps: {loaded}"
            )
        return self.maps[name]

    def plan_hidden_states(self, req: HiddenStatesRequest) -> Plan:
        wmap = self._map(req.map) if req.map is not None else None
        if req.layers is not None:
            layers = list(req.layers)
        elif req.layer is not None:
            layers = [req.layer]
        elif wmap is not None:
            layers = list(wmap.layers)
        else:
            layers = list(self.settings.default_layers)
        resolved = resolve_layers(layers, self.facts.num_layers, self.settings.allowed_layers)
        pooling = req.pooling or (wmap.pooling if wmap else self.settings.default_pooling)
        if wmap is not None:
            fitted = resolve_layers(list(wmap.layers), self.facts.num_layers, None)
            if resolved != fitted or pooling != wmap.pooling:
                raise invalid(
                    f"map {wmap.name!r} was fitted on layers {list(wmap.layers)} with pooling "
                    f"{wmap.pooling!r}, not layers {layers} with pooling {pooling!r}: leave "
                    "out 'layers' and 'pooling', or ask for exactly these"
                )
        plan = Plan(
            token_ids=[],
            layers=layers,
            resolved=resolved,
            pooling=pooling,
            encoding_format=req.encoding_format,
            dtype=req.dtype,
            map=wmap,
        )
        # Cheap checks first: a request that is too big by prompt count alone
        # never gets tokenized.
        plan = replace(plan, token_ids=self._tokens(req.prompts))
        self._check_bytes(plan)
        return plan

    def plan_embeddings(self, req: EmbeddingsRequest) -> Plan:
        layer = req.layer if req.layer is not None else self.settings.default_layers[0]
        resolved = resolve_layers([layer], self.facts.num_layers, self.settings.allowed_layers)
        if req.dimensions is not None and req.dimensions != self.facts.hidden_size:
            raise invalid(
                f"dimensions={req.dimensions} is not supported: embeddings have the model's "
                f"hidden size, {self.facts.hidden_size}"
            )
        pooling = req.pooling or self.settings.default_pooling
        if pooling == "all":
            raise invalid("pooling 'all' is not available for embeddings; use last or mean")
        plan = Plan(
            token_ids=self._tokens(req.prompts()),
            layers=[layer],
            resolved=resolved,
            pooling=pooling,
            encoding_format=req.encoding_format,
            dtype="float32",
        )
        self._check_bytes(plan)
        return plan

    # -- running -----------------------------------------------------------------

    async def run(self, plan: Plan) -> list[dict[int, F32]]:
        """Extract the planned hidden states (records token and batch metrics)."""
        self.metrics.prompt_tokens.inc(sum(plan.prompt_tokens))
        self.metrics.batch_size.observe(len(plan.token_ids))
        unique = list(dict.fromkeys(plan.resolved))
        results = await self.engine.extract(plan.token_ids, unique, plan.pooling)
        nbytes = 0
        for per_prompt in results:
            for layer in unique:
                nbytes += per_prompt[layer].size * BYTES_PER_VALUE[plan.dtype]
        self.metrics.hidden_state_bytes.inc(nbytes)
        return results

    async def run_mapped(self, plan: Plan) -> list[F32]:
        """Extract the planned layers and apply the plan's map (off the event loop: a
        large map is a large matrix product): per prompt ``[output]`` or
        ``[tokens, output]``."""
        assert plan.map is not None
        results = await self.run(plan)
        return await asyncio.to_thread(map_states, plan.map, plan.resolved, results)

    # -- rendering ---------------------------------------------------------------

    def render_json(self, plan: Plan, results: list[dict[int, F32]]) -> dict[str, Any]:
        """The :class:`HiddenStatesResponse` object (same fields, same order), built as
        a plain dict whose ``hidden_state`` values are numpy arrays (or base64 text):
        serialise it with :func:`dumps_json`, not ``json.dumps``."""
        pairs = list(zip(plan.layers, plan.resolved, strict=True))
        prompt_tokens = plan.prompt_tokens
        fmt, dtype = plan.encoding_format, plan.dtype
        data: list[dict[str, Any]] = [
            {
                "index": i,
                "prompt_tokens": prompt_tokens[i],
                "layers": [
                    {
                        "layer": layer,
                        "resolved_layer": absolute,
                        "hidden_state": encode_array(per_prompt[absolute], fmt, dtype),
                    }
                    for layer, absolute in pairs
                ],
            }
            for i, per_prompt in enumerate(results)
        ]
        return {
            "hidden_states": [d["layers"][0]["hidden_state"] for d in data],
            "layer": plan.layers[0],
            "model": self.facts.name,
            "prompt_tokens": prompt_tokens,
            "metadata": {
                "num_prompts": len(plan.token_ids),
                "hidden_size": self.facts.hidden_size,
                "dtype": dtype,
                "engine_dtype": self.facts.dtype,
                "num_layers": self.facts.num_layers,
                "pooling": plan.pooling,
                "encoding_format": fmt,
            },
            "layers": plan.layers,
            "resolved_layers": plan.resolved,
            "data": data,
        }

    def render_safetensors(self, plan: Plan, results: list[dict[int, F32]]) -> bytes:
        """Tensors ``layer.<requested>`` = ``[prompts, hidden]`` when pooled, else
        ``prompt.<i>.layer.<requested>`` = ``[tokens, hidden]``; facts in metadata."""
        tensors: dict[str, F32] = {}
        for layer, absolute in zip(plan.layers, plan.resolved, strict=True):
            if plan.pooling == "all":
                for i, per_prompt in enumerate(results):
                    tensors[f"prompt.{i}.layer.{layer}"] = per_prompt[absolute]
            else:
                tensors[f"layer.{layer}"] = np.stack([r[absolute] for r in results])
        metadata = {
            "model": self.facts.name,
            "layers": json.dumps(plan.layers),
            "resolved_layers": json.dumps(plan.resolved),
            "prompt_tokens": json.dumps(plan.prompt_tokens),
            "pooling": plan.pooling,
            "hidden_size": str(self.facts.hidden_size),
            "engine_dtype": self.facts.dtype,
        }
        return safetensors_bytes(tensors, plan.dtype, metadata)

    def render_mapped_json(self, plan: Plan, mapped: list[F32]) -> dict[str, Any]:
        """The :class:`~lamina_server.protocol.MappedHiddenStatesResponse` object (numpy
        arrays inside: see :func:`dumps_json`)."""
        assert plan.map is not None
        prompt_tokens = plan.prompt_tokens
        data = [
            {
                "index": i,
                "prompt_tokens": prompt_tokens[i],
                "hidden_state": encode_array(vectors, plan.encoding_format, plan.dtype),
            }
            for i, vectors in enumerate(mapped)
        ]
        return {
            "hidden_states": [d["hidden_state"] for d in data],
            "layer": plan.layers[0],
            "model": self.facts.name,
            "prompt_tokens": prompt_tokens,
            "metadata": {
                "num_prompts": len(plan.token_ids),
                "hidden_size": plan.map.output_size,
                "dtype": plan.dtype,
                "engine_dtype": self.facts.dtype,
                "num_layers": self.facts.num_layers,
                "pooling": plan.pooling,
                "encoding_format": plan.encoding_format,
            },
            "layers": plan.layers,
            "resolved_layers": plan.resolved,
            "map": plan.map.describe(),
            "data": data,
        }

    def render_mapped_safetensors(self, plan: Plan, mapped: list[F32]) -> bytes:
        """Tensor ``mapped`` = ``[prompts, output]`` when pooled, else
        ``prompt.<i>.mapped`` = ``[tokens, output]``; the map and facts in metadata."""
        assert plan.map is not None
        if plan.pooling == "all":
            tensors = {f"prompt.{i}.mapped": v for i, v in enumerate(mapped)}
        else:
            tensors = {"mapped": np.stack(mapped)}
        metadata = {
            "model": self.facts.name,
            "map": plan.map.name,
            "target_model": plan.map.target_model,
            "target_layers": json.dumps(list(plan.map.target_layers)),
            "layers": json.dumps(plan.layers),
            "resolved_layers": json.dumps(plan.resolved),
            "prompt_tokens": json.dumps(plan.prompt_tokens),
            "pooling": plan.pooling,
            "hidden_size": str(plan.map.output_size),
            "engine_dtype": self.facts.dtype,
        }
        return safetensors_bytes(tensors, plan.dtype, metadata)

    def render_embeddings(self, plan: Plan, results: list[dict[int, F32]]) -> dict[str, Any]:
        """The OpenAI embeddings object (numpy arrays inside: see :func:`dumps_json`)."""
        absolute = plan.resolved[0]
        tokens = sum(plan.prompt_tokens)
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": encode_array(r[absolute], plan.encoding_format, "float32"),
                }
                for i, r in enumerate(results)
            ],
            "model": self.facts.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def map_states(
    wmap: LoadedMap, resolved: Sequence[int], results: list[dict[int, F32]]
) -> list[F32]:
    """Per prompt, the map applied to its layers' vectors side by side (in the map's order)."""
    inputs = [np.concatenate([r[layer] for layer in resolved], axis=-1) for r in results]
    if inputs[0].ndim == 1:  # pooled: one matrix product for all prompts
        return list(wmap.apply(np.stack(inputs)))
    return [wmap.apply(rows) for rows in inputs]
