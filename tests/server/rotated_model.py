"""A copy of a tiny Llama whose residual stream is rotated by an orthogonal matrix ``R``.

Every matrix that writes the residual stream gets ``R`` on its output side and every
matrix that reads it gets ``R`` on its input side, so the copy computes the same
function, with hidden states exactly the original's times ``R``. HF ``Linear`` weights
are ``[out, in]`` (``y = x Wᵀ``): a reader ``W`` becomes ``W R`` (``xR (WR)ᵀ = x Wᵀ``),
a writer becomes ``Rᵀ W`` (``h (RᵀW)ᵀ = h Wᵀ R``); embedding rows are written vectors
(``E R``). RMSNorm commutes with ``R`` only when its weights are all one
(``‖xR‖ = ‖x‖``, and an elementwise scale does not commute with a rotation), which
transformers' initialisation gives; the copy refuses anything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file, save_file

F64 = npt.NDArray[np.float64]
READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
WRITERS = ("o_proj", "down_proj")


def random_rotation(d: int, seed: int) -> F64:
    """A random orthogonal matrix (Haar: QR of a Gaussian with the signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    result: F64 = q * np.sign(np.diag(r))
    return result


def rotated_copy(original: Path, rotation: F64, out: Path) -> Path:
    """``original`` (a Llama checkpoint directory) with its residual stream rotated, in ``out``."""
    tensors = load_file(str(original / "model.safetensors"))
    rotated = {}
    for name, weight in tensors.items():
        w = weight.astype(np.float64)
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        if name in ("model.embed_tokens.weight", "lm_head.weight") or module in READERS:
            new = w @ rotation
        elif module in WRITERS:
            new = rotation.T @ w
        elif name.endswith("norm.weight"):
            if not np.all(w == 1):
                raise ValueError(f"{name} is not all ones: RMSNorm would not commute with R")
            new = w
        else:
            raise ValueError(f"{name}: not a parameter this rotation knows how to treat")
        rotated[name] = np.ascontiguousarray(new, dtype=weight.dtype)
    out.mkdir(parents=True, exist_ok=True)
    for item in original.iterdir():
        if item.name != "model.safetensors" and item.is_file():
            shutil.copy2(item, out / item.name)
    save_file(rotated, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
