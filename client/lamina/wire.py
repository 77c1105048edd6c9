"""Requests and answers of ``POST /v1/hidden_states`` as numpy (pure).

Two transports carry the same values: JSON with base64 little-endian values, and a
safetensors body (``Accept: application/octet-stream``) for large answers. Both
decode to one array per prompt, ``[layers, hidden]`` (pooled) or
``[layers, tokens, hidden]`` (``all``), which :func:`assemble` shapes for the caller.
numpy has no bfloat16: bfloat16 values come back widened to float32 (exactly).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import safetensors

from .batching import pooled_bytes
from .errors import ServerError

Prompt = str | Sequence[int]
Pooling = Literal["last", "mean", "all"]
DType = Literal["float32", "float16", "bfloat16"]
Array = npt.NDArray[np.floating[Any]]
# One prompt or a list of them, as hidden_states() returns them.
Result = Array | list[Array]

POOLINGS: tuple[Pooling, ...] = ("last", "mean", "all")
DTYPES: tuple[DType, ...] = ("float32", "float16", "bfloat16")
BINARY_THRESHOLD = 256 * 1024  # bytes; above this JSON's base64 and parsing cost too much
OCTET_STREAM = "application/octet-stream"

_WIRE_DTYPE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}
_SAFETENSORS_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# safetensors' stub leaves deserialize untyped; this is what it returns.
_deserialize: Callable[[bytes], list[tuple[str, dict[str, Any]]]] = safetensors.deserialize


def request_body(
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    pooling: Pooling,
    dtype: DType,
    map_name: str | None = None,
) -> dict[str, Any]:
    """The JSON request; with ``map_name`` the server picks the map's layers and pooling."""
    body: dict[str, Any] = {
        "prompts": [p if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    }
    body |= {"map": map_name} if map_name else {"layers": list(layers), "pooling": pooling}
    return body | {"dtype": dtype, "encoding_format": "base64"}


def use_binary(
    binary: bool | Literal["auto"],
    *,
    num_prompts: int,
    num_layers: int,
    hidden_size: int,
    pooling: Pooling,
    dtype: DType,
) -> bool:
    """Safetensors when asked, for ``all`` (size unknown, usually large) and for
    pooled answers over :data:`BINARY_THRESHOLD`."""
    if binary != "auto":
        return bool(binary)
    if pooling == "all":
        return True
    return pooled_bytes(num_prompts, num_layers, hidden_size, dtype) > BINARY_THRESHOLD


def from_wire(raw: bytes, dtype: str) -> Array:
    """Little-endian values of ``dtype`` as numpy (bfloat16 widened to float32)."""
    values = np.frombuffer(raw, dtype=_WIRE_DTYPE[dtype])
    if dtype == "bfloat16":
        # bfloat16 is the upper half of a float32.
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float16 if dtype == "float16" else np.float32)


def decode_json(body: bytes, num_layers: int) -> list[Array]:
    """Per prompt ``[layers, hidden]`` or ``[layers, tokens, hidden]`` from a JSON answer
    (a mapped answer has one vector per prompt: one "layer" of the map's output size)."""
    try:
        answer = json.loads(body)
        meta = answer["metadata"]
        dtype, hidden, pooling = meta["dtype"], int(meta["hidden_size"]), meta["pooling"]
        out = []
        for item in answer["data"]:
            given = item.get("layers", [item])
            states = [_json_state(s["hidden_state"], dtype, hidden, pooling) for s in given]
            if len(states) != num_layers:
                raise ValueError(f"{len(states)} layers, {num_layers} requested")
            out.append(np.stack(states))
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(f"unreadable JSON answer from the server ({e})") from None


def _json_state(state: str | list[Any], dtype: str, hidden: int, pooling: str) -> Array:
    if isinstance(state, str):
        values = from_wire(base64.b64decode(state), dtype)
    else:  # encoding_format "float": JSON numbers already rounded to dtype
        values = np.asarray(state, dtype=np.float16 if dtype == "float16" else np.float32)
    return values.reshape(-1, hidden) if pooling == "all" else values.reshape(hidden)


def decode_safetensors(
    body: bytes, names: Sequence[str], num_prompts: int, pooling: Pooling
) -> list[Array]:
    """Per prompt arrays (as :func:`decode_json`) from a safetensors answer holding
    ``names`` (``layer.<L>``, or ``mapped``), per prompt ``prompt.<i>.<name>`` for ``all``."""
    try:
        tensors = {
            name: from_wire(info["data"], _SAFETENSORS_DTYPE[info["dtype"]]).reshape(info["shape"])
            for name, info in _deserialize(body)
        }
        if pooling == "all":
            return [
                np.stack([tensors[f"prompt.{i}.{name}"] for name in names])
                for i in range(num_prompts)
            ]
        by_layer = np.stack([tensors[name] for name in names], axis=1)
    except (KeyError, ValueError, safetensors.SafetensorError) as e:
        raise ServerError(f"unreadable safetensors answer from the server ({e!r})") from None
    if by_layer.shape[0] != num_prompts:
        raise ServerError(f"the server answered {by_layer.shape[0]} prompts, {num_prompts} sent")
    return list(by_layer)


def assemble(per_prompt: list[Array], single_layer: bool, pooling: Pooling) -> Result:
    """The caller's shape: pooled ``[prompts, hidden]`` or ``[prompts, layers, hidden]``;
    ``all`` a list of ``[tokens, hidden]`` or ``[layers, tokens, hidden]``."""
    if pooling == "all":
        return [p[0] for p in per_prompt] if single_layer else per_prompt
    stacked = np.stack(per_prompt)
    return stacked[:, 0] if single_layer else stacked
