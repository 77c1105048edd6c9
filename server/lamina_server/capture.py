"""Worker-side hidden-state capture: a vLLM worker extension (torch only, no vllm import).

vLLM mixes :class:`HiddenStateCapture` into its worker class
(``--worker-extension-cls lamina_server.capture.HiddenStateCapture``); the API
process reaches its methods with ``collective_rpc``.

How a capture works (the facts it relies on are pinned by tests against transformers:
``tests/server/test_server_correctness.py``, ``test_server_preemption.py``):

* A request asks for hidden states through ``SamplingParams.extra_args["lamina"]``
  = ``{"key", "layers" (absolute indices), "pooling"}``. Requests without it (plain
  generation) cost one dict lookup per request per step.
* A pre-forward hook on the model builds, once per step, the plan: which rows of the
  packed ``[total_tokens, hidden]`` batch belong to which wanted request, and their
  prompt positions (``query_start_loc`` + ``num_computed_tokens``).
* A forward hook on each decoder layer copies the residual stream (``hidden +
  residual`` when the layer returns both, the tensor otherwise) of those rows into a
  per-request buffer *by position* (chunked prefill, preemption recompute), keeping
  only positions below the prompt length (the decode row is dropped).
* ``lamina_fetch`` pools (last/mean/all) and returns float32 bytes, then forgets the
  request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

CAPTURE_KEY = "lamina"
_STALE_SECONDS = 600.0


@dataclass
class _Capture:
    layers: tuple[int, ...]
    pooling: str
    prompt_len: int
    # layer -> [prompt_len, hidden] (all), [1, hidden] (last; mean: running sum)
    buffers: dict[int, torch.Tensor] = field(default_factory=dict)
    seen: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> bool mask
    created: float = field(default_factory=time.monotonic)


@dataclass
class _PlanItem:
    capture: _Capture
    row_start: int
    row_end: int
    pos_start: int


def find_decoder_layers(model: torch.nn.Module, num_layers: int) -> list[torch.nn.Module]:
    """The model's decoder layers: the ``ModuleList`` holding ``num_layers`` blocks.

    Works for ``model.layers`` (Llama, Qwen, Mistral…) and ``transformer.h`` (GPT-2…);
    a language model's list is preferred over a vision tower's of the same length.
    """

    def rank(name: str) -> int:
        if "language_model" in name or name.endswith("model.layers"):
            return 0
        if name.endswith(("layers", ".h")):
            return 1
        if "vision" in name or "visual" in name:
            return 3
        return 2

    candidates = [
        (rank(name), name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == num_layers
    ]
    if not candidates:
        raise RuntimeError(f"no ModuleList of {num_layers} decoder layers found in the model")
    candidates.sort(key=lambda c: c[0])
    return list(candidates[0][2])


def residual_stream(output: Any) -> torch.Tensor:
    """The residual stream from a decoder layer's output.

    vLLM Llama-style layers return ``(hidden, residual)`` whose *sum* is the stream
    (the next layer's fused add+norm overwrites both in place, so the sum, a new
    tensor, must be taken now); other layers return the stream itself.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        hidden = output[0]
        if len(output) > 1 and isinstance(output[1], torch.Tensor):
            summed: torch.Tensor = hidden + output[1]
            return summed
        only: torch.Tensor = hidden
        return only
    raise TypeError(f"unexpected decoder layer output type {type(output)!r}")


def _placement(model: torch.nn.Module) -> dict[str, Any]:
    """Where and in what this rank's weights live: dtype, device, the GPU's name, bytes."""
    params = list(model.parameters())
    first = params[0] if params else torch.empty(0)
    device = first.device
    return {
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": device.type,
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "weights_bytes": sum(p.numel() * p.element_size() for p in params),
    }


class HiddenStateCapture:
    """Mixed into vLLM's worker; methods are called through ``collective_rpc``.

    vLLM adds this class to the worker's bases without calling ``__init__``, so state
    is created lazily in :meth:`lamina_install`.
    """

    # Provided by the vLLM worker this class is mixed into.
    model_runner: Any
    rank: int

    def _lamina_state(self) -> dict[str, Any]:
        state: dict[str, Any] | None = getattr(self, "_lamina", None)
        if state is None:
            state = {
                "captures": {},
                "plan": {},
                "hook_calls": 0,
                "layers": [],
                "handles": [],
                "capture_rank": True,
            }
            self._lamina = state
        return state

    def lamina_install(self) -> dict[str, Any]:
        """Install the hooks (idempotent); return the model's facts."""
        state = self._lamina_state()
        model = self.model_runner.model
        hf_config = self.model_runner.model_config.hf_config
        text_config = getattr(hf_config, "get_text_config", lambda: hf_config)()
        num_layers = int(getattr(text_config, "num_hidden_layers", None) or text_config.n_layer)
        hidden_size = int(getattr(text_config, "hidden_size", None) or text_config.n_embd)
        if not state["handles"]:
            layers = find_decoder_layers(model, num_layers)
            state["layers"] = layers
            state["capture_rank"] = self._lamina_is_tp_rank_zero()
            handles = [model.register_forward_pre_hook(self._lamina_plan_hook)]
            for index, layer in enumerate(layers):
                if type(layer).__name__ == "PPMissingLayer":
                    continue  # owned by another pipeline stage
                handles.append(layer.register_forward_hook(self._lamina_layer_hook(index)))
            state["handles"] = handles
        return {"num_layers": num_layers, "hidden_size": hidden_size, **_placement(model)}

    def lamina_stats(self) -> dict[str, int]:
        """How often a layer hook captured rows, and pending captures (for tests)."""
        state = self._lamina_state()
        return {"hook_calls": int(state["hook_calls"]), "pending": len(state["captures"])}

    def _lamina_is_tp_rank_zero(self) -> bool:
        """Capture on tensor-parallel rank 0 only: the residual stream is replicated
        after the all-reduce (reasoned, not verified on GPUs here)."""
        tp = int(self.model_runner.vllm_config.parallel_config.tensor_parallel_size)
        return int(getattr(self, "rank", 0)) % max(tp, 1) == 0

    # -- hooks -----------------------------------------------------------------

    def _lamina_plan_hook(self, _module: torch.nn.Module, _args: Any) -> None:
        state = self._lamina_state()
        plan: dict[int, list[_PlanItem]] = {}
        state["plan"] = plan
        if not state["capture_rank"]:
            return
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = int(batch.num_reqs)
        if num_reqs == 0:
            return
        requests = runner.requests
        captures: dict[str, _Capture] = state["captures"]
        qsl = runner.query_start_loc.np
        computed = batch.num_computed_tokens_cpu
        for i, req_id in enumerate(batch.req_ids[:num_reqs]):
            req = requests.get(req_id)
            params = getattr(req, "sampling_params", None)
            extra = getattr(params, "extra_args", None)
            if not extra or CAPTURE_KEY not in extra:
                continue
            spec = extra[CAPTURE_KEY]
            key = str(spec["key"])
            cap = captures.get(key)
            if cap is None:
                cap = _Capture(
                    layers=tuple(int(x) for x in spec["layers"]),
                    pooling=str(spec["pooling"]),
                    prompt_len=int(req.num_prompt_tokens),
                )
                captures[key] = cap
            start, end = int(qsl[i]), int(qsl[i + 1])
            pos = int(computed[i])
            if pos >= cap.prompt_len or end <= start:
                continue  # decode step: nothing of the prompt left
            item = _PlanItem(cap, start, end, pos)
            for layer in cap.layers:
                plan.setdefault(layer, []).append(item)

    def _lamina_layer_hook(self, index: int) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            state = self._lamina_state()
            items: list[_PlanItem] | None = state["plan"].get(index)
            if not items:
                return
            stream = residual_stream(output)
            state["hook_calls"] += 1
            for item in items:
                cap = item.capture
                n = min(item.row_end - item.row_start, cap.prompt_len - item.pos_start)
                rows = stream[item.row_start : item.row_start + n]
                buf = cap.buffers.get(index)
                if cap.pooling == "last":
                    last = cap.prompt_len - 1
                    if item.pos_start <= last < item.pos_start + n:
                        if buf is None:
                            buf = cap.buffers[index] = torch.empty(
                                (1, rows.shape[1]), dtype=torch.float32
                            )
                        buf[0] = rows[last - item.pos_start]
                        cap.seen[index] = torch.ones(1, dtype=torch.bool)
                    continue
                if buf is None:
                    # mean keeps a running sum ([1, hidden]); all keeps every row.
                    shape = (1 if cap.pooling == "mean" else cap.prompt_len, rows.shape[1])
                    buf = cap.buffers[index] = torch.zeros(shape, dtype=torch.float32)
                    cap.seen[index] = torch.zeros(cap.prompt_len, dtype=torch.bool)
                seen = cap.seen[index][item.pos_start : item.pos_start + n]
                if cap.pooling == "mean":
                    # A recomputed row (preemption) was already added: skip it.
                    fresh = ~seen
                    if bool(fresh.all()):
                        buf[0] += rows.to(torch.float32).sum(dim=0)
                    elif bool(fresh.any()):
                        buf[0] += rows[fresh].to(torch.float32).sum(dim=0)
                else:
                    # Assignment copies; positions are absolute, so a recomputed row
                    # overwrites rather than duplicates.
                    buf[item.pos_start : item.pos_start + n] = rows
                seen[:] = True

        return hook

    # -- fetching ----------------------------------------------------------------

    def lamina_fetch(self, keys: list[str], discard: list[str]) -> list[list[Any]]:
        """Pool and return the captures of finished requests, then forget them.

        Returns ``[key, layer, shape, float32 bytes, complete]`` rows; ranks that do
        not capture (TP rank > 0) return nothing. ``discard`` names captures of
        aborted requests; captures older than ten minutes are dropped too.
        """
        state = self._lamina_state()
        captures: dict[str, _Capture] = state["captures"]
        for key in discard:
            captures.pop(key, None)
        now = time.monotonic()
        for key in [k for k, c in captures.items() if now - c.created > _STALE_SECONDS]:
            captures.pop(key, None)
        out: list[list[Any]] = []
        for key in keys:
            cap = captures.pop(key, None)
            if cap is None:
                continue
            for layer, buf in cap.buffers.items():
                complete = bool(cap.seen[layer].all())
                if cap.pooling == "mean":
                    value = buf[0] / cap.prompt_len
                elif cap.pooling == "last":
                    value = buf[0]
                else:
                    value = buf
                arr = value.contiguous().numpy()
                out.append([key, layer, list(arr.shape), arr.tobytes(), complete])
        return out
