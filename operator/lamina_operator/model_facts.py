"""What the operator knows about a model's shape before any pod has loaded it.

The spec can state `model.numLayers`/`model.hiddenSize`; otherwise a small catalogue of
common models answers. Unknown models simply have no facts: layer indices are then
checked by the server when it starts.
"""

from __future__ import annotations

from lamina_operator.spec import ModelFacts, ModelSpec

# (decoder layers, hidden size) of common checkpoints, by lower-case repository name
# without the organisation and without -Instruct/-Chat suffixes.
CATALOGUE: dict[str, tuple[int, int]] = {
    "llama-3.1-8b": (32, 4096),
    "llama-3.1-70b": (80, 8192),
    "llama-3.1-405b": (126, 16384),
    "llama-3.2-1b": (16, 2048),
    "llama-3.2-3b": (28, 3072),
    "llama-3.3-70b": (80, 8192),
    "meta-llama-3-8b": (32, 4096),
    "meta-llama-3-70b": (80, 8192),
    "mistral-7b-v0.3": (32, 4096),
    "mistral-7b-v0.1": (32, 4096),
    "qwen2.5-0.5b": (24, 896),
    "qwen2.5-1.5b": (28, 1536),
    "qwen2.5-7b": (28, 3584),
    "qwen2.5-72b": (80, 8192),
    "gemma-2-9b": (42, 3584),
    "phi-3-mini-4k": (32, 3072),
}

_SUFFIXES = ("-instruct", "-chat", "-it")


def catalogue_key(model_name: str) -> str:
    """`meta-llama/Llama-3.1-8B-Instruct` -> `llama-3.1-8b`."""
    key = model_name.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _SUFFIXES:
        key = key.removesuffix(suffix)
    return key


def model_facts(model: ModelSpec) -> ModelFacts | None:
    """Layers and hidden size from the spec, else from the catalogue, else None."""
    known = CATALOGUE.get(catalogue_key(model.name))
    num_layers = model.num_layers or (known[0] if known else None)
    hidden_size = model.hidden_size or (known[1] if known else None)
    if num_layers is None and hidden_size is None:
        return None
    source = "spec" if model.num_layers or model.hidden_size else "catalogue"
    return ModelFacts(num_layers=num_layers, hidden_size=hidden_size, source=source)
