"""Alignment maps the server applies (``--map NAME=PATH``): files written by ``lamina
align fit``, format ``lamina-align-map/1`` (README, "The map file").

The server reads them with its own loader (it does not import the client package;
both share only the file format): ``y = x @ weight + bias``, where ``x`` is the
concatenation of the source model's vectors of the map's ``source_layers``, pooled as
its ``pooling``. Files are read and checked before the engine starts, then checked
against the served model once it is known (:func:`check_against_model`); a map that
does not fit stops the server with a message saying why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open

from .config import POOLINGS, Pooling
from .layers import valid_range

FORMAT = "lamina-align-map/1"
F32 = npt.NDArray[np.float32]


class MapError(Exception):
    """A map that cannot be served; the message names the map and what is wrong."""


@dataclass(frozen=True)
class LoadedMap:
    """A map ready to apply, and what requests and ``/health`` are told about it."""

    name: str
    weight: F32  # [input_size, output_size]
    bias: F32  # [output_size]
    layers: tuple[int, ...]  # source layers, as fitted (negative counts from the end)
    pooling: Pooling
    source_model: str
    source_hidden_size: int
    target_model: str
    target_layers: tuple[int, ...]
    method: str

    @property
    def input_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, rows: F32) -> F32:
        """``[rows, input_size]`` source vectors -> ``[rows, output_size]`` target vectors."""
        mapped: F32 = rows @ self.weight + self.bias
        return mapped

    def describe(self) -> dict[str, Any]:
        """What ``/health`` and a mapped answer say about the map."""
        return {
            "name": self.name,
            "source_model": self.source_model,
            "target_model": self.target_model,
            "layers": list(self.layers),
            "target_layers": list(self.target_layers),
            "pooling": self.pooling,
            "method": self.method,
            "input_size": self.input_size,
            "output_size": self.output_size,
        }


def _layers(meta: Mapping[str, str], key: str) -> tuple[int, ...]:
    values = json.loads(meta[key])
    if not isinstance(values, list) or not values or not all(type(v) is int for v in values):
        raise ValueError(f"{key} is not a list of layers: {meta[key]!r}")
    return tuple(values)


def read_map(name: str, path: str) -> LoadedMap:
    """The map in ``path``, checked for consistency (not yet against the model)."""
    where = f"map {name!r} ({path})"
    try:
        with safe_open(path, "np") as f:
            meta: dict[str, str] = f.metadata() or {}
            names = set(f.keys())
            if not {"weight", "bias"} <= names:
                raise MapError(f"{where} is not a Lamina map: it needs tensors weight and bias")
            weight = np.ascontiguousarray(f.get_tensor("weight"), dtype=np.float32)
            bias = np.ascontiguousarray(f.get_tensor("bias"), dtype=np.float32)
    except (OSError, SafetensorError) as e:
        raise MapError(f"cannot read {where}: {e}") from None
    if meta.get("format") != FORMAT:
        raise MapError(f"{where} has format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        loaded = LoadedMap(
            name=name,
            weight=weight,
            bias=bias,
            layers=_layers(meta, "source_layers"),
            pooling=_pooling(meta["pooling"]),
            source_model=meta.get("source_model", ""),
            source_hidden_size=int(meta["source_hidden_size"]),
            target_model=meta.get("target_model", ""),
            target_layers=_layers(meta, "target_layers"),
            method=meta.get("method", ""),
        )
    except (KeyError, ValueError) as e:
        raise MapError(f"{where} has unreadable metadata: {e}") from None
    want_in = len(loaded.layers) * loaded.source_hidden_size
    if weight.ndim != 2 or weight.shape[0] != want_in or bias.shape != (weight.shape[1],):
        raise MapError(
            f"{where}: weight {list(weight.shape)} and bias {list(bias.shape)} do not fit "
            f"{len(loaded.layers)} source layer(s) of {loaded.source_hidden_size}"
        )
    return loaded


def _pooling(value: str) -> Pooling:
    for pooling in POOLINGS:
        if pooling == value:
            return pooling
    raise ValueError(f"unknown pooling {value!r}")


def read_maps(flags: Sequence[tuple[str, str]]) -> dict[str, LoadedMap]:
    """Every ``(name, path)`` read; a name given twice is an error."""
    maps: dict[str, LoadedMap] = {}
    for name, path in flags:
        if name in maps:
            raise MapError(f"map name {name!r} is given twice (--map / LAMINA_MAP)")
        maps[name] = read_map(name, path)
    return maps


def check_against_model(
    m: LoadedMap,
    model: str,
    num_layers: int,
    hidden_size: int,
    allowed_layers: Sequence[int] | None = None,
) -> str | None:
    """Raise when ``m`` cannot take this model's vectors (or reads a layer the server
    does not allow); a warning (or None) when it can but was fitted on a model of
    another name."""
    if m.source_hidden_size != hidden_size:
        raise MapError(
            f"map {m.name!r} takes vectors of {m.source_hidden_size} values per layer "
            f"(from {m.source_model or 'its source model'}), but {model} has hidden size "
            f"{hidden_size}: serve the map's source model, or drop the map"
        )
    outside = [la for la in m.layers if not -num_layers <= la < num_layers]
    if outside:
        raise MapError(
            f"map {m.name!r} reads layer {outside[0]}, outside {model}'s layers "
            f"({valid_range(num_layers)})"
        )
    if allowed_layers:
        permitted = {a % num_layers for a in allowed_layers if -num_layers <= a < num_layers}
        refused = [la for la in m.layers if la % num_layers not in permitted]
        if refused:
            raise MapError(
                f"map {m.name!r} reads layer {refused[0]}, which --allowed-layers does not allow"
            )
    if m.source_model and m.source_model != model:
        return (
            f"map {m.name!r} was fitted on {m.source_model!r}, this server serves {model!r} "
            "(same sizes: served anyway; check that it is the same model)"
        )
    return None
