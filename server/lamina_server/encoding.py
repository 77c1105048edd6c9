"""Turning float32 hidden states into response bytes (pure numpy).

* ``dtype`` float32 / float16 / bfloat16: values are rounded to that type (bfloat16
  by round-to-nearest-even of the float32 bits, as torch does).
* ``encoding_format`` ``float`` gives JSON numbers; ``base64`` gives the
  little-endian bytes of the chosen dtype (what OpenAI clients decode as float32).
* A safetensors body (``Accept: application/octet-stream``) written directly, so
  bfloat16 needs neither torch nor a numpy bfloat16 type.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

DType = Literal["float32", "float16", "bfloat16"]
EncodingFormat = Literal["float", "base64"]

BYTES_PER_VALUE: dict[DType, int] = {"float32": 4, "float16": 2, "bfloat16": 2}
_SAFETENSORS_DTYPE: dict[DType, str] = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def to_bfloat16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """bfloat16 bit patterns of ``values`` (round to nearest, ties to even)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def to_dtype_bytes(values: npt.NDArray[np.float32], dtype: DType) -> bytes:
    """Little-endian bytes of ``values`` in ``dtype``."""
    if dtype == "bfloat16":
        return to_bfloat16_bits(values).astype("<u2").tobytes()
    if dtype == "float16":
        return np.ascontiguousarray(values, dtype="<f2").tobytes()
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def round_to_dtype(values: npt.NDArray[np.float32], dtype: DType) -> npt.NDArray[np.float32]:
    """``values`` rounded to ``dtype`` and widened back to float32."""
    if dtype == "bfloat16":
        return (to_bfloat16_bits(values).astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    return values


def encode_array(
    values: npt.NDArray[np.float32], encoding_format: EncodingFormat, dtype: DType
) -> npt.NDArray[np.float64] | str:
    """JSON-ready form of a vector or matrix: base64 text, or for orjson
    (``OPT_SERIALIZE_NUMPY``) the numbers as a float64 array instead of Python float
    lists. float64 (not float32) so the JSON numbers are exactly those ``json.dumps``
    gives for the rounded values' float lists: each float32 value printed as
    the shortest repr of its float64 widening (float32's shortest repr would parse to
    a different float64)."""
    if encoding_format == "base64":
        return base64_text(to_dtype_bytes(values, dtype))
    return np.ascontiguousarray(round_to_dtype(values, dtype), dtype=np.float64)


_BASE64_CHUNK = 3 << 20  # a multiple of 3 bytes: the chunks' base64 joins seamlessly


def base64_text(data: bytes) -> str:
    """``base64.b64encode(data)`` as text, a few MiB at a time (short C calls: a big
    answer rendered in a thread leaves the event loop its turns)."""
    view = memoryview(data)
    chunks = (
        base64.b64encode(view[i : i + _BASE64_CHUNK]) for i in range(0, len(data), _BASE64_CHUNK)
    )
    return b"".join(chunks).decode("ascii")


def safetensors_bytes(
    tensors: Mapping[str, npt.NDArray[np.float32]],
    dtype: DType,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """A safetensors file holding ``tensors`` converted to ``dtype``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        data = to_dtype_bytes(arr, dtype)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPE[dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)
