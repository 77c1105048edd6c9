"""Command line and environment of ``python -m lamina_server`` (pure, no vLLM).

Lamina's own flags are parsed here; everything else (the vLLM flags the operator
renders, and anything after ``--`` or unrecognised) is passed to vLLM's own parser.
Each listed flag can also come from ``LAMINA_<FLAG_UPPER_SNAKE>`` (e.g.
``LAMINA_MAX_MODEL_LEN=2048``, ``LAMINA_ENABLE_PREFIX_CACHING=false``); an explicit
flag wins over the environment. The API key comes only from ``LAMINA_API_KEY``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .logs import LogFormat

Pooling = Literal["last", "mean", "all"]
POOLINGS: tuple[Pooling, ...] = ("last", "mean", "all")

# vLLM flags the operator renders. "value" takes an argument, "flag" is a switch,
# "bool" has a --no- form.
VLLM_FLAGS: dict[str, Literal["value", "flag", "bool"]] = {
    "model": "value",
    "revision": "value",
    "served-model-name": "value",
    "dtype": "value",
    "quantization": "value",
    "max-model-len": "value",
    "trust-remote-code": "flag",
    "tensor-parallel-size": "value",
    "pipeline-parallel-size": "value",
    "gpu-memory-utilization": "value",
    "enable-prefix-caching": "bool",
    "max-num-seqs": "value",
    "max-num-batched-tokens": "value",
    "host": "value",
    "port": "value",
}

LAMINA_FLAGS = (
    "default-layers",
    "allowed-layers",
    "default-pooling",
    "max-prompts-per-request",
    "max-tokens-per-request",
    "max-response-bytes",
    "max-queue-length",
    "drain-timeout-seconds",
    "log-format",
    "max-body-bytes",
    "max-json-depth",
    "max-json-array-items",
    "max-json-values",
    "max-chat-items",
    "max-prompt-chars",
    "max-header-bytes",
    "max-requests-per-connection",
    "map",
)

DEFAULT_PORT = 8000
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class LaminaSettings:
    """Lamina's own knobs (limits, defaults, drain)."""

    default_layers: tuple[int, ...] = (-2,)
    allowed_layers: tuple[int, ...] | None = None  # None: every layer
    default_pooling: Pooling = "last"
    max_prompts_per_request: int = 64
    max_tokens_per_request: int = 16384
    max_response_bytes: int = 256 * 1024 * 1024
    max_queue_length: int = 256
    drain_timeout_seconds: float = 30.0
    # Checked before any parsing, on every route (vLLM's too): see limits.json_problem.
    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    max_json_array_items: int = 32768  # items of one array (token ids)
    max_json_values: int = 32768  # values in one body: bounds parse time and memory
    max_chat_items: int = 256  # messages, content parts and tools of a chat request:
    # vLLM validates each on the event loop, up to 80 µs for an odd one
    # Text characters per request on the hidden-state routes, checked before tokenizing.
    max_prompt_chars: int = 1_000_000
    max_header_bytes: int = 64 * 1024  # request line + headers (uvicorn/h11)
    # Answers on a keep-alive connection before it is closed (Connection: close), so
    # that clients holding one (SDKs do) reconnect and reach pods added since.
    max_requests_per_connection: int = 100
    # Alignment maps to load at start: (name, path of a `lamina align fit` file).
    maps: tuple[tuple[str, str], ...] = ()
    api_key: str | None = None
    log_format: LogFormat = "text"


def env_name(flag: str) -> str:
    """``max-model-len`` -> ``LAMINA_MAX_MODEL_LEN``."""
    return "LAMINA_" + flag.upper().replace("-", "_")


def parse_layer_list(text: str) -> tuple[int, ...]:
    """``"-2, 0,3"`` -> ``(-2, 0, 3)``; empty -> ``()``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(int(t) for t in items)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from e


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"256MiB"``, ``"1G"``, ``"512kb"``."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    number, unit = int(m.group(1)), (m.group(2) or "").lower()
    if "i" in unit:
        return int(number * 1024 ** ("kmgt".index(unit[0]) + 1))
    return int(number * _UNITS[unit[:1]])


_MAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_map_flag(text: str) -> list[tuple[str, str]]:
    """``NAME=PATH``, or several comma-separated (as ``LAMINA_MAP`` holds them)."""
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not _MAP_NAME.match(name) or not path:
            raise argparse.ArgumentTypeError(
                f"--map takes NAME=PATH (NAME of letters, digits, '.', '_', '-'), got {item!r}"
            )
        pairs.append((name, path))
    return pairs


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


MAX_JSON_DEPTH = 256  # Python's json (vLLM's parser) recurses once per level


def _json_depth(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_JSON_DEPTH:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_JSON_DEPTH}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Parser of Lamina's own flags (vLLM's are parsed by vLLM)."""
    d = LaminaSettings()
    p = argparse.ArgumentParser(
        prog="python -m lamina_server",
        description="vLLM OpenAI-compatible server with /v1/hidden_states. "
        "Flags not listed here are passed to vLLM.",
        add_help=False,
        allow_abbrev=False,
    )
    p.add_argument("--default-layers", type=parse_layer_list, default=d.default_layers)
    p.add_argument("--allowed-layers", type=parse_layer_list, default=())
    p.add_argument("--default-pooling", choices=POOLINGS, default=d.default_pooling)
    p.add_argument(
        "--max-prompts-per-request", type=_positive_int, default=d.max_prompts_per_request
    )
    p.add_argument("--max-tokens-per-request", type=_positive_int, default=d.max_tokens_per_request)
    p.add_argument("--max-response-bytes", type=parse_size, default=d.max_response_bytes)
    p.add_argument("--max-queue-length", type=_positive_int, default=d.max_queue_length)
    p.add_argument("--drain-timeout-seconds", type=float, default=d.drain_timeout_seconds)
    p.add_argument("--max-body-bytes", type=parse_size, default=d.max_body_bytes)
    p.add_argument("--max-json-depth", type=_json_depth, default=d.max_json_depth)
    p.add_argument("--max-json-array-items", type=_positive_int, default=d.max_json_array_items)
    p.add_argument("--max-json-values", type=_positive_int, default=d.max_json_values)
    p.add_argument("--max-chat-items", type=_positive_int, default=d.max_chat_items)
    p.add_argument("--max-prompt-chars", type=_positive_int, default=d.max_prompt_chars)
    p.add_argument("--max-header-bytes", type=parse_size, default=d.max_header_bytes)
    p.add_argument(
        "--max-requests-per-connection",
        type=_positive_int,
        default=d.max_requests_per_connection,
        help="close a keep-alive connection after this many answers (clients reconnect "
        "and reach new replicas)",
    )
    p.add_argument(
        "--map",
        type=parse_map_flag,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an alignment map (lamina align fit) requests can name; repeatable, or "
        "LAMINA_MAP=NAME=PATH[,NAME=PATH]",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=d.log_format,
        help="Lamina's own log lines as text or one JSON object per line",
    )
    return p


def _given(argv: Sequence[str], flag: str) -> bool:
    names = (f"--{flag}", f"--no-{flag}")
    return any(a in names or a.startswith(f"--{flag}=") for a in argv)


def apply_environment(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``argv`` plus flags taken from ``LAMINA_*`` variables not already given."""
    out = list(argv)
    extra: list[str] = []
    for flag in LAMINA_FLAGS:
        value = env.get(env_name(flag))
        if value is not None and not _given(out, flag):
            extra += [f"--{flag}", value]
    for flag, kind in VLLM_FLAGS.items():
        value = env.get(env_name(flag))
        if value is None or _given(out, flag):
            continue
        if kind == "value":
            extra += [f"--{flag}", value]
            continue
        truth = value.strip().lower()
        if truth not in _TRUE | _FALSE:
            raise SystemExit(f"{env_name(flag)}: expected true/false, got {value!r}")
        if truth in _TRUE:
            extra.append(f"--{flag}")
        elif kind == "bool":
            extra.append(f"--no-{flag}")
    # Inserted before a "--" so they are still parsed as flags.
    if "--" in out:
        i = out.index("--")
        return out[:i] + extra + out[i:]
    return out + extra


def _join_list_values(argv: Sequence[str]) -> list[str]:
    """``--default-layers -2,0`` -> ``--default-layers=-2,0``: argparse would take a
    value starting with ``-`` (other than a plain negative number) for a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--default-layers", "--allowed-layers") and i + 1 < len(argv):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def parse_command_line(
    argv: Sequence[str], env: Mapping[str, str]
) -> tuple[LaminaSettings, list[str]]:
    """Split the command line into Lamina's settings and the argv meant for vLLM."""
    full = apply_environment(argv, env)
    if "--" in full:
        i = full.index("--")
        ours, passthrough = full[:i], full[i + 1 :]
    else:
        ours, passthrough = full, []
    ns, rest = build_parser().parse_known_args(_join_list_values(ours))
    settings = LaminaSettings(
        default_layers=ns.default_layers or (-2,),
        allowed_layers=ns.allowed_layers or None,
        default_pooling=ns.default_pooling,
        max_prompts_per_request=ns.max_prompts_per_request,
        max_tokens_per_request=ns.max_tokens_per_request,
        max_response_bytes=ns.max_response_bytes,
        max_queue_length=ns.max_queue_length,
        drain_timeout_seconds=ns.drain_timeout_seconds,
        max_body_bytes=ns.max_body_bytes,
        max_json_depth=ns.max_json_depth,
        max_json_array_items=ns.max_json_array_items,
        max_json_values=ns.max_json_values,
        max_chat_items=ns.max_chat_items,
        max_prompt_chars=ns.max_prompt_chars,
        max_header_bytes=ns.max_header_bytes,
        max_requests_per_connection=ns.max_requests_per_connection,
        maps=tuple(pair for given in ns.map for pair in given),
        api_key=env.get("LAMINA_API_KEY") or None,
        log_format=ns.log_format,
    )
    return settings, rest + passthrough


# torch's names of the dtypes a checkpoint records, as vLLM's --dtype spells them.
_CHECKPOINT_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
}


def engine_dtype(requested: str, checkpoint: str | None, quantization: str | None) -> str:
    """The ``--dtype`` vLLM gets.

    ``auto`` means the checkpoint's own dtype, as transformers loads it: vLLM's own
    ``auto`` would compute a float32 checkpoint in half precision, and the hidden states
    would then differ from transformers' by far more than rounding. A checkpoint that
    records no dtype (or an exotic one) is float32, transformers' default. Quantised
    models keep vLLM's choice: their kernels decide the activation dtype.
    """
    if requested != "auto" or quantization:
        return requested
    name = (checkpoint or "float32").removeprefix("torch.")
    return _CHECKPOINT_DTYPES.get(name, "float32")
