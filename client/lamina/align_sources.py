"""Where the vectors of an alignment come from: a deployment, a server URL, a client, a
file written by ``lamina hidden-states`` (``.npy``/``.safetensors``), or an array.

:func:`collect` returns one row per anchor (pooled) or per token (``pooling="all"``),
the layers concatenated in the order asked. Servers are read with the client's own
batching (at the server's published limits, large answers as safetensors), never as one
whole matrix in JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open

from .align import AlignmentError
from .align_map import Side
from .client import Client
from .deployment import for_deployment
from .wire import Pooling, Prompt

F32 = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
FILE_SUFFIXES = (".npy", ".safetensors")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Deployment:
    """An LLMDeployment by name (reached as :func:`lamina.for_deployment` does)."""

    name: str
    namespace: str = "default"
    context: str | None = None


Source = str | os.PathLike[str] | Deployment | Client | npt.NDArray[Any]


def parse_source(text: str, namespace: str = "default", context: str | None = None) -> Source:
    """A command line's source: ``http(s)://…`` a URL, ``….npy``/``….safetensors`` a
    file, else an LLMDeployment as ``NAME`` or ``NAMESPACE/NAME``."""
    if text.startswith(("http://", "https://")):
        return text
    if text.endswith(FILE_SUFFIXES):
        return Path(text)
    namespace_part, _, name = text.rpartition("/")
    if not _NAME.match(name) or (namespace_part and not _NAME.match(namespace_part)):
        raise AlignmentError(
            f"{text!r} is neither a URL (http://…), a .npy/.safetensors file nor an "
            "LLMDeployment (NAME or NAMESPACE/NAME)"
        )
    return Deployment(name, namespace_part or namespace, context)


def describe(source: Source) -> str:
    """A short name of ``source`` for the report."""
    if isinstance(source, Deployment):
        return f"llmd {source.namespace}/{source.name}"
    if isinstance(source, Client):
        return source.base_url
    if isinstance(source, np.ndarray):
        return f"array {list(source.shape)}"
    return str(source)


def prompt_set_sha256(prompts: Sequence[Prompt]) -> str:
    """SHA-256 of the prompts as compact JSON (texts, or token-id lists), in order."""
    plain = [p if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    text = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Collected:
    """Rows of one side: ``[rows, layers × hidden]``, the anchor of each row, what made them."""

    rows: F32
    groups: Ints
    side: Side
    tokens: tuple[int, ...]  # rows per anchor


def _as_rows(per_anchor: Sequence[F32]) -> tuple[F32, Ints, tuple[int, ...]]:
    """Per anchor ``[layers, hidden]`` (pooled) or ``[layers, tokens, hidden]`` (all) ->
    rows with the layers side by side."""
    blocks, counts = [], []
    for a in per_anchor:
        if a.ndim == 2:  # [layers, hidden]
            blocks.append(a.reshape(1, -1))
        else:  # [layers, tokens, hidden] -> [tokens, layers × hidden]
            blocks.append(np.transpose(a, (1, 0, 2)).reshape(a.shape[1], -1))
        counts.append(len(blocks[-1]))
    groups = np.repeat(np.arange(len(per_anchor), dtype=np.int64), counts)
    rows = np.concatenate(blocks).astype(np.float32, copy=False)
    return rows, groups, tuple(counts)


def _from_result(result: Any) -> list[F32]:
    """Per anchor ``[layers, hidden]`` or ``[layers, tokens, hidden]`` from what
    ``Client.hidden_states`` returns for a list of layers."""
    return list(result) if isinstance(result, list) else list(np.asarray(result))


def _from_server(
    client: Client,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    pooling: Pooling,
    progress: Callable[[int], None] | None,
) -> tuple[list[F32], str, int]:
    result = client.hidden_states(prompts, list(layers), pooling, progress=progress)
    info = client.info()
    return _from_result(result), info.model, info.hidden_size


def _from_npy(path: Path, layers: Sequence[int], pooling: Pooling) -> list[F32]:
    if pooling == "all":
        raise AlignmentError(
            f"{path}: .npy files hold pooled vectors; for pooling 'all' use the .safetensors "
            "file `lamina hidden-states --pooling all` writes"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AlignmentError(f"cannot read {path}: {e}") from None
    if array.ndim == 2 and len(layers) == 1:
        return list(array[:, None].astype(np.float32))
    if array.ndim == 3 and array.shape[1] == len(layers):
        return list(array.astype(np.float32))
    raise AlignmentError(
        f"{path} holds an array of shape {list(array.shape)}, which is not "
        f"{len(layers)} layer(s) per prompt; .npy files do not record their layers: pass "
        "the --layers it was written with ([prompts, hidden] is one layer, "
        "[prompts, layers, hidden] several)"
    )


def _from_safetensors(
    path: Path, layers: Sequence[int], pooling: Pooling
) -> tuple[list[F32], dict[str, str]]:
    try:
        with safe_open(str(path), "np") as f:
            meta: dict[str, str] = f.metadata() or {}
            names = set(f.keys())
            recorded = meta.get("pooling")
            if recorded and recorded != pooling:
                raise AlignmentError(
                    f"{path} holds pooling {recorded!r} vectors, not {pooling!r}: "
                    f"use --pooling {recorded}"
                )
            if pooling == "all":
                count = len({n.split(".")[1] for n in names if n.startswith("prompt.")})
                wanted = [[f"prompt.{i}.layer.{la}" for la in layers] for i in range(count)]
            else:
                wanted = [[f"layer.{la}" for la in layers]]
            missing = [n for group in wanted for n in group if n not in names]
            if missing:
                held = sorted({n.rsplit(".", 1)[-1] for n in names if ".layer." in f".{n}"})
                raise AlignmentError(
                    f"{path} has no tensor {missing[0]}: it holds layers "
                    f"{', '.join(held) or 'none'}; choose among them with --layers"
                )
            tensors = {n: f.get_tensor(n).astype(np.float32) for g in wanted for n in g}
    except (OSError, SafetensorError) as e:
        raise AlignmentError(f"cannot read {path}: {e}") from None
    if pooling == "all":
        per_anchor = [np.stack([tensors[n] for n in group]) for group in wanted]
    else:
        per_anchor = list(np.stack([tensors[n] for n in wanted[0]], axis=1))
    return per_anchor, meta


def _from_file(source: Source, layers: Sequence[int], pooling: Pooling) -> tuple[list[F32], str]:
    """Per anchor arrays and the model's name (when the file says) from a file or array."""
    if isinstance(source, np.ndarray):
        if pooling == "all":
            raise AlignmentError("arrays hold pooled vectors; for pooling 'all' ask the servers")
        array = np.asarray(source, dtype=np.float32)
        return list(array.reshape(len(array), len(layers), -1)), ""
    if str(source).endswith(".npy"):
        return _from_npy(Path(str(source)), layers, pooling), ""
    if str(source).endswith(".safetensors"):
        per_anchor, meta = _from_safetensors(Path(str(source)), layers, pooling)
        return per_anchor, meta.get("model", "")
    raise AlignmentError(
        f"{source}: a file source must end in .npy or .safetensors "
        "(as `lamina hidden-states -o` writes them)"
    )


def _is_server(source: Source) -> bool:
    return isinstance(source, Client | Deployment) or (
        isinstance(source, str) and source.startswith(("http://", "https://"))
    )


def collect(
    source: Source,
    prompts: Sequence[Prompt] | None,
    layers: Sequence[int],
    pooling: Pooling,
    *,
    revision: str = "",
    api_key: str | None = None,
    timeout: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Collected:
    """The vectors of ``prompts`` at ``layers`` (concatenated) from ``source``.

    Files and arrays already hold them (``prompts`` may then be None); servers are asked
    (``progress`` is called with the size of each finished batch; ``api_key`` and
    ``timeout`` are for the clients opened here, of URLs and deployments).
    """
    if not _is_server(source):
        per_anchor, model = _from_file(source, layers, pooling)
        if prompts is not None and len(per_anchor) != len(prompts):
            raise AlignmentError(
                f"{describe(source)} holds {len(per_anchor)} anchors but {len(prompts)} prompts "
                "were given: use the prompts the file was made from, in the same order"
            )
        hidden = int(per_anchor[0].shape[-1]) if per_anchor else 0
    elif not prompts:
        raise AlignmentError(f"{describe(source)} is a server: give the anchor prompts")
    elif isinstance(source, Client):
        per_anchor, model, hidden = _from_server(source, prompts, layers, pooling, progress)
    else:
        client_args: dict[str, Any] = {"api_key": api_key}
        if timeout is not None:
            client_args["timeout"] = timeout
        client = (
            for_deployment(source.name, source.namespace, context=source.context, **client_args)
            if isinstance(source, Deployment)
            else Client(str(source), **client_args)
        )
        with client:
            per_anchor, model, hidden = _from_server(client, prompts, layers, pooling, progress)
    rows, groups, counts = _as_rows(per_anchor)
    side = Side(model=model, revision=revision, layers=tuple(layers), hidden_size=hidden)
    return Collected(rows, groups, side, counts)


def check_pairs(source: Collected, target: Collected, pooling: Pooling) -> None:
    """Both sides must describe the same anchors (and, for ``all``, the same tokens)."""
    if len(source.tokens) != len(target.tokens):
        raise AlignmentError(
            f"the source has {len(source.tokens)} anchors and the target "
            f"{len(target.tokens)}: both must hold the same prompts, in the same order"
        )
    if pooling == "all":
        for i, (a, b) in enumerate(zip(source.tokens, target.tokens, strict=True)):
            if a != b:
                raise AlignmentError(
                    f"prompt {i} has {a} tokens for the source and {b} for the target: "
                    "pooling 'all' pairs tokens, which needs one tokenizer for both models; "
                    "use --pooling last or mean"
                )
