"""Layer indices: what the client asks for, and which decoder layer that is.

Layer ``i`` (0-based) is the residual stream after decoder layer ``i`` — transformers'
``output_hidden_states[i + 1]``. Negative indices count from the end: ``-1`` is the
last decoder layer's output *before* the final norm (transformers' last hidden state
is after it), ``-2`` the one before.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import invalid


def valid_range(num_layers: int) -> str:
    return f"{-num_layers}..{num_layers - 1}"


def resolve_layer(layer: int, num_layers: int) -> int:
    """Absolute index of ``layer``; 422 naming the valid range when out of range."""
    if not -num_layers <= layer < num_layers:
        raise invalid(
            f"layer {layer} is out of range: the model has {num_layers} layers, "
            f"valid layers are {valid_range(num_layers)}"
        )
    return layer % num_layers


def resolve_layers(
    layers: Sequence[int], num_layers: int, allowed: Sequence[int] | None
) -> list[int]:
    """Absolute indices of ``layers``, checked against range and ``allowed``."""
    resolved = [resolve_layer(layer, num_layers) for layer in layers]
    if allowed:
        permitted = {a % num_layers for a in allowed if -num_layers <= a < num_layers}
        for requested, absolute in zip(layers, resolved, strict=True):
            if absolute not in permitted:
                names = ", ".join(str(a) for a in allowed)
                raise invalid(
                    f"layer {requested} is not allowed on this server; allowed layers: {names}"
                )
    return resolved
