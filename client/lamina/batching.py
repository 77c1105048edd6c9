"""How many prompts go in each request (pure).

The first batch size comes from the server's limits (``GET /health``): at most
``max_prompts_per_request``, and for pooled answers, whose size is known in advance,
no more than fit in ``max_response_bytes``. Token counts are only known to the
server, so a batch it still refuses (413) is split in half, and later batches keep
the smaller size: what was too big once is likely too big again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_PROMPTS = 64
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ServedMap:
    """An alignment map the server applies (``/health``'s ``maps``)."""

    name: str
    layers: tuple[int, ...]
    pooling: str
    input_size: int
    output_size: int
    target_model: str


@dataclass(frozen=True)
class ServerInfo:
    """What the client needs from ``GET /health``."""

    model: str
    num_layers: int
    hidden_size: int  # 0 when the server did not say
    engine_dtype: str | None
    max_prompts: int
    max_tokens: int | None
    max_response_bytes: int | None
    maps: dict[str, ServedMap] = field(default_factory=dict)


def parse_health(health: dict[str, Any]) -> ServerInfo:
    """:class:`ServerInfo` from a ``/health`` answer; limits the server does not
    publish get the client's defaults."""
    limits = health.get("limits") or {}

    def positive(value: Any) -> int | None:
        return value if isinstance(value, int) and value > 0 else None

    return ServerInfo(
        model=str(health.get("model", "")),
        num_layers=int(health.get("num_layers", 0)),
        hidden_size=int(health.get("hidden_size", 0)),
        engine_dtype=health.get("dtype"),
        max_prompts=positive(limits.get("max_prompts_per_request")) or DEFAULT_MAX_PROMPTS,
        max_tokens=positive(limits.get("max_tokens_per_request")),
        max_response_bytes=positive(limits.get("max_response_bytes")),
        maps={
            str(m["name"]): ServedMap(
                name=str(m["name"]),
                layers=tuple(int(v) for v in m.get("layers", ())),
                pooling=str(m.get("pooling", "last")),
                input_size=int(m.get("input_size", 0)),
                output_size=int(m.get("output_size", 0)),
                target_model=str(m.get("target_model", "")),
            )
            for m in health.get("maps") or []
            if isinstance(m, dict) and "name" in m
        },
    )


def pooled_bytes(num_prompts: int, num_layers: int, hidden_size: int, dtype: str) -> int:
    """Size of the hidden states in a pooled answer (what the server budgets)."""
    return num_prompts * num_layers * hidden_size * BYTES_PER_VALUE[dtype]


def first_batch_size(
    info: ServerInfo, num_layers: int, pooling: str, dtype: str, width: int | None = None
) -> int:
    """Prompts in the first request: ``num_layers`` vectors of ``width`` values (default
    the hidden size) per prompt must fit the server's byte limit."""
    size = info.max_prompts
    width = width or info.hidden_size
    if pooling != "all" and info.max_response_bytes and width:
        per_prompt = pooled_bytes(1, num_layers, width, dtype)
        size = min(size, info.max_response_bytes // per_prompt)
    return max(1, size)


def halve(size: int) -> int | None:
    """Batch size after a 413 for a batch of ``size`` prompts; None for one prompt
    (it cannot be split: the error is the caller's)."""
    return None if size <= 1 else (size + 1) // 2
