"""Checks of an LLMDeployment that the CRD schema cannot express.

Everything here is pure. A failure is an `InvalidSpec`: the operator reports it in
status (`Ready=False, reason=InvalidSpec`) and as an Event, and does not retry until
the spec changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from lamina_operator.model_facts import model_facts
from lamina_operator.spec import NAME_RULE, LLMDeploymentSpec, ModelFacts


class InvalidSpec(ValueError):
    """The spec cannot be served as written; the message says what to change."""


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in ("spec", *item["loc"]))
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _layers_out_of_range(layers: Iterable[int], num_layers: int) -> list[int]:
    return [layer for layer in layers if not -num_layers <= layer < num_layers]


def check_layers(spec: LLMDeploymentSpec, facts: ModelFacts | None) -> None:
    """Layer indices must exist in the model (when the number of layers is known)."""
    if facts is None or facts.num_layers is None:
        return
    n = facts.num_layers
    for field, layers in (
        ("hiddenStates.defaultLayers", spec.hidden_states.default_layers),
        ("hiddenStates.allowedLayers", spec.hidden_states.allowed_layers or []),
    ):
        bad = _layers_out_of_range(layers, n)
        if bad:
            raise InvalidSpec(
                f"spec.{field} has layer {bad[0]}, but {spec.model.name} has {n} layers: "
                f"use an index from {-n} to {n - 1}"
            )


def parse_spec(name: str, raw: Mapping[str, Any]) -> tuple[LLMDeploymentSpec, ModelFacts | None]:
    """Typed spec and model facts of an LLMDeployment, or InvalidSpec saying what is wrong."""
    if not NAME_RULE.holds(name):
        raise InvalidSpec(NAME_RULE.message)
    try:
        spec = LLMDeploymentSpec.model_validate(dict(raw))
    except ValidationError as error:
        raise InvalidSpec(_describe(error)) from None
    facts = model_facts(spec.model)
    check_layers(spec, facts)
    if facts and facts.num_layers and spec.engine.pipeline_parallel_size > facts.num_layers:
        raise InvalidSpec(
            f"spec.engine.pipelineParallelSize is {spec.engine.pipeline_parallel_size}, more "
            f"stages than the model's {facts.num_layers} layers"
        )
    return spec, facts
