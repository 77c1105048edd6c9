"""A fitted W-Matrix as a file: :class:`AlignmentMap` (safetensors, format ``lamina-align-map/1``).

The file is all a consumer needs to map vectors, ``y = x @ weight + bias``, where ``x``
is the concatenation of the source model's vectors of ``source_layers`` (in that order,
pooled as ``pooling``). Tensors (float32):

* ``weight`` ``[dx, dy]`` and ``bias`` ``[dy]``: the map between the models' own spaces;
* ``source_mean``, ``source_scale`` ``[dx]``, ``target_mean``, ``target_scale`` ``[dy]``:
  the preprocessing the fit used (zeros/ones when off), already folded into ``weight``
  and ``bias``; ``diag(source_scale) @ weight @ diag(1/target_scale)`` is the map the
  fit solved for (whose orthogonality is reported).

Metadata (strings; JSON where marked): ``format``, ``method``, ``pooling``,
``source_model``, ``source_revision``, ``source_layers`` (JSON list),
``source_hidden_size`` (per layer), the same four for ``target_``, ``center``
(``true``/``false``), ``scale``, ``projection``, ``lambda``, ``lambda_relative``,
``metrics`` (JSON: held-out metrics of the map and the baselines), ``prompt_set_sha256``,
``num_anchors``, ``train_anchors``, ``test_anchors``, ``holdout``, ``folds``, ``seed``,
``created_by``. The server reads the same file (``--map NAME=PATH``) with its own loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ._version import __version__
from .wire import POOLINGS, Pooling

FORMAT = "lamina-align-map/1"
F32 = npt.NDArray[np.float32]
TENSORS = ("weight", "bias", "source_mean", "source_scale", "target_mean", "target_scale")


class MapFileError(ValueError):
    """A map file that cannot be read or is not a Lamina map (the message says which)."""


@dataclass(frozen=True)
class Side:
    """One model's part in the map: which vectors, from what."""

    model: str
    revision: str
    layers: tuple[int, ...]
    hidden_size: int  # per layer; the map's side is len(layers) × hidden_size

    @property
    def size(self) -> int:
        return len(self.layers) * self.hidden_size


@dataclass(frozen=True)
class MapFacts:
    """Everything recorded about how a map was made (the file's metadata)."""

    source: Side
    target: Side
    pooling: Pooling
    method: str
    center: bool
    scale: str
    projection: str | None = None
    lam: float | None = None
    lam_relative: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    prompt_set_sha256: str = ""
    num_anchors: int = 0
    train_anchors: int = 0
    test_anchors: int = 0
    holdout: float = 0.0
    folds: int = 0
    seed: int = 0
    created_by: str = f"lamina-client {__version__}"

    def to_metadata(self) -> dict[str, str]:
        out = {"format": FORMAT, "method": self.method, "pooling": self.pooling}
        for prefix, side in (("source", self.source), ("target", self.target)):
            out[f"{prefix}_model"] = side.model
            out[f"{prefix}_revision"] = side.revision
            out[f"{prefix}_layers"] = json.dumps(list(side.layers))
            out[f"{prefix}_hidden_size"] = str(side.hidden_size)
        out.update(
            center="true" if self.center else "false",
            scale=self.scale,
            projection=self.projection or "",
            metrics=json.dumps(self.metrics),
            prompt_set_sha256=self.prompt_set_sha256,
            created_by=self.created_by,
        )
        for key, value in (
            ("lambda", self.lam),
            ("lambda_relative", self.lam_relative),
            ("num_anchors", self.num_anchors),
            ("train_anchors", self.train_anchors),
            ("test_anchors", self.test_anchors),
            ("holdout", self.holdout),
            ("folds", self.folds),
            ("seed", self.seed),
        ):
            out[key] = "" if value is None else repr(value)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> MapFacts:
        if meta.get("format") != FORMAT:
            raise MapFileError(
                f"not a Lamina alignment map (format {meta.get('format')!r}, expected {FORMAT!r})"
            )

        def side(prefix: str) -> Side:
            return Side(
                model=meta[f"{prefix}_model"],
                revision=meta.get(f"{prefix}_revision", ""),
                layers=tuple(int(v) for v in json.loads(meta[f"{prefix}_layers"])),
                hidden_size=int(meta[f"{prefix}_hidden_size"]),
            )

        pooling = next((p for p in POOLINGS if p == meta["pooling"]), None)
        if pooling is None:
            raise MapFileError(f"unknown pooling {meta['pooling']!r}")

        def number(key: str) -> float | None:
            return float(meta[key]) if meta.get(key) else None

        return cls(
            source=side("source"),
            target=side("target"),
            pooling=pooling,
            method=meta["method"],
            center=meta.get("center") == "true",
            scale=meta.get("scale", "none"),
            projection=meta.get("projection") or None,
            lam=number("lambda"),
            lam_relative=number("lambda_relative"),
            metrics=json.loads(meta.get("metrics") or "{}"),
            prompt_set_sha256=meta.get("prompt_set_sha256", ""),
            num_anchors=int(meta.get("num_anchors") or 0),
            train_anchors=int(meta.get("train_anchors") or 0),
            test_anchors=int(meta.get("test_anchors") or 0),
            holdout=float(meta.get("holdout") or 0),
            folds=int(meta.get("folds") or 0),
            seed=int(meta.get("seed") or 0),
            created_by=meta.get("created_by", ""),
        )


@dataclass(frozen=True)
class AlignmentMap:
    """A W-Matrix: ``apply`` maps source vectors into the target's space.

    >>> m = AlignmentMap.load("llama-to-qwen.safetensors")
    >>> m.apply(source_vectors)  # [n, dx] or [n, layers, hidden] -> [n, dy]
    """

    weight: F32
    bias: F32
    source_mean: F32
    source_scale: F32
    target_mean: F32
    target_scale: F32
    facts: MapFacts

    def __post_init__(self) -> None:
        dx, dy = self.facts.source.size, self.facts.target.size
        want = {
            "weight": (dx, dy),
            "bias": (dy,),
            "source_mean": (dx,),
            "source_scale": (dx,),
            "target_mean": (dy,),
            "target_scale": (dy,),
        }
        for name, shape in want.items():
            got = getattr(self, name).shape
            if got != shape:
                raise MapFileError(
                    f"{name} has shape {list(got)}, expected {list(shape)} for "
                    f"{len(self.facts.source.layers)} source layer(s) of "
                    f"{self.facts.source.hidden_size} and {len(self.facts.target.layers)} "
                    f"target layer(s) of {self.facts.target.hidden_size}"
                )

    @property
    def input_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def output_size(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, vectors: npt.ArrayLike) -> F32:
        """Target-space vectors of ``vectors``: ``[n, dx]``, ``[n, layers, hidden]`` (the
        source layers, as ``lamina hidden-states`` saves several) or one ``[dx]``."""
        x = np.asarray(vectors)
        single = x.ndim == 1
        if x.ndim == 3:
            x = x.reshape(len(x), -1)
        elif single:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"vectors of shape {list(np.shape(vectors))} do not fit this map: it takes "
                f"{self.input_size} values per row ({len(self.facts.source.layers)} layer(s) "
                f"{list(self.facts.source.layers)} of {self.facts.source.model} × "
                f"{self.facts.source.hidden_size})"
            )
        mapped = x.astype(np.float64) @ self.weight.astype(np.float64) + self.bias
        out = mapped.astype(np.float32)
        result: F32 = out[0] if single else out
        return result

    def save(self, path: str | Path) -> None:
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in TENSORS}
        save_file(tensors, str(path), metadata=self.facts.to_metadata())

    @classmethod
    def load(cls, path: str | Path) -> AlignmentMap:
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except (OSError, SafetensorError) as e:
            raise MapFileError(f"cannot read the map {path}: {e}") from None
        missing = [name for name in TENSORS if name not in tensors]
        if missing:
            raise MapFileError(f"{path} is not a Lamina map: no tensor {', '.join(missing)}")
        try:
            facts = MapFacts.from_metadata(meta)
        except (KeyError, ValueError) as e:
            if isinstance(e, MapFileError):
                raise MapFileError(f"{path}: {e}") from None
            raise MapFileError(f"{path}: unreadable metadata ({e!r})") from None
        return cls(**{name: tensors[name].astype(np.float32) for name in TENSORS}, facts=facts)
