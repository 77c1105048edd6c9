"""The CLI's files: prompts in (.txt, .jsonl, stdin), hidden states out (.npy, .safetensors)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from .wire import Array, Prompt, Result

OUTPUT_SUFFIXES = (".npy", ".safetensors")


class InputError(ValueError):
    """A prompts file or output path the user has to fix (exit code 2)."""


def parse_prompts(text: str, jsonl: bool) -> list[Prompt]:
    """Prompts from a file's text. Text: one per line. JSON lines: a string, a list of
    token ids, or an object with ``prompt`` or ``text``. Blank lines are skipped."""
    prompts: list[Prompt] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompts.append(_json_prompt(line, number) if jsonl else line)
    return prompts


def _json_prompt(line: str, number: int) -> Prompt:
    try:
        value: Any = json.loads(line)
    except ValueError as e:
        raise InputError(f"line {number} is not JSON ({e})") from None
    if isinstance(value, dict):
        value = value.get("prompt", value.get("text"))
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(type(t) is int for t in value):
        return value
    raise InputError(
        f"line {number}: expected a string, a list of token ids, or an object with "
        f'"prompt" or "text", got {line.strip()[:80]}'
    )


def read_prompts(source: str, stdin_text: str | None = None) -> list[Prompt]:
    """Prompts from ``source`` (``-`` = ``stdin_text``, read as text lines)."""
    if source == "-":
        return parse_prompts(stdin_text or "", jsonl=False)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read prompts from {source}: {e.strerror or e}") from None
    return parse_prompts(text, jsonl=path.suffix == ".jsonl")


def check_output(path: str, pooling: str) -> str:
    """The output's suffix, once it is known to fit the answer."""
    suffix = Path(path).suffix
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--output must end in .npy or .safetensors, not {path!r}")
    if not Path(path).parent.is_dir():
        raise InputError(f"cannot write {path}: no directory {Path(path).parent}")
    if suffix == ".npy" and pooling == "all":
        raise InputError(
            "pooling 'all' gives one [tokens, hidden] array per prompt, of different "
            "lengths, which .npy cannot hold: write to a .safetensors file"
        )
    return suffix


def tensors(result: Result, layers: int | Sequence[int], pooling: str) -> dict[str, Array]:
    """Named tensors of a result: ``layer.<L>`` = ``[prompts, hidden]`` (pooled) or
    ``prompt.<i>.layer.<L>`` = ``[tokens, hidden]`` (all), as the server names them."""
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    single = isinstance(layers, int)
    out: dict[str, Array] = {}
    if pooling == "all":
        for i, prompt in enumerate(result):
            for j, layer in enumerate(layer_list):
                out[f"prompt.{i}.layer.{layer}"] = np.ascontiguousarray(
                    prompt if single else prompt[j]
                )
    else:
        assert isinstance(result, np.ndarray)
        for j, layer in enumerate(layer_list):
            out[f"layer.{layer}"] = np.ascontiguousarray(result if single else result[:, j])
    return out


def write(
    path: str,
    result: Result,
    layers: int | Sequence[int],
    pooling: str,
    metadata: dict[str, str],
) -> None:
    if path.endswith(".npy"):
        np.save(path, np.asarray(result))
    else:
        save_file(tensors(result, layers, pooling), path, metadata=metadata)
