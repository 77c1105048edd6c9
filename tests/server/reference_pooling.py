"""Pooling of one prompt's per-token hidden states in numpy: the reference the tests
compare with (the server pools in torch, in the worker: lamina_server.capture)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from lamina_server.config import Pooling

F32 = npt.NDArray[np.float32]


def pool(rows: F32, pooling: Pooling) -> F32:
    """``rows`` is ``[tokens, hidden]``: ``last`` -> the last token's vector,
    ``mean`` -> the mean over tokens, ``all`` -> ``rows`` unchanged."""
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"expected a non-empty [tokens, hidden] matrix, got {rows.shape}")
    if pooling == "last":
        return np.asarray(rows[-1], dtype=np.float32)
    if pooling == "mean":
        return np.asarray(rows.mean(axis=0, dtype=np.float32), dtype=np.float32)
    return rows
