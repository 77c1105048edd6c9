"""Request and response models of Lamina's routes (pydantic; unknown fields are 422).

``/v1/hidden_states`` keeps the shape existing clients use (``prompts``, ``layer``,
``max_tokens``, ``temperature``, ``return_hidden_states`` in; ``hidden_states``,
``layer``, ``model``, ``prompt_tokens``, ``metadata`` out) and extends it. The seed
TypeScript client (``001_…`` §3.2) sends ``maxTokens`` and ``returnHiddenStates`` in
camelCase: those two spellings are accepted by name (validation aliases), nothing
else unknown is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)

from .config import Pooling
from .encoding import DType, EncodingFormat

# fail_fast: a long list of bad items is one error, not one per item (pydantic would
# otherwise build an error object, with its input, for every item: gigabytes).
TokenIds = Annotated[list[StrictInt], Field(min_length=1, fail_fast=True)]
Prompt = StrictStr | TokenIds
Prompts = Annotated[list[Prompt], Field(min_length=1, fail_fast=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HiddenStatesRequest(_Strict):
    """``POST /v1/hidden_states``."""

    prompts: Prompts
    layers: Annotated[list[StrictInt], Field(min_length=1, max_length=1024)] | None = None
    layer: StrictInt | None = None
    pooling: Pooling | None = None
    encoding_format: EncodingFormat = "float"
    dtype: DType = "float32"
    model: StrictStr | None = None
    # An alignment map loaded at start (--map): the answer is in its target's space.
    map: StrictStr | None = None
    # Accepted for compatibility with existing clients; they do not change the answer.
    max_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None, validation_alias=AliasChoices("max_tokens", "maxTokens")
    )
    temperature: Annotated[float, Field(ge=0)] | None = None
    return_hidden_states: bool | None = Field(
        default=None,
        validation_alias=AliasChoices("return_hidden_states", "returnHiddenStates"),
    )

    @model_validator(mode="after")
    def _one_way_to_name_layers(self) -> HiddenStatesRequest:
        if self.layers is not None and self.layer is not None:
            raise ValueError("give either 'layer' or 'layers', not both")
        if self.return_hidden_states is False:
            raise ValueError("return_hidden_states=false is not supported by this route")
        for i, p in enumerate(self.prompts):
            if isinstance(p, str) and not p:
                raise ValueError(f"prompts[{i}] is empty")
        return self


class EmbeddingsRequest(_Strict):
    """``POST /v1/embeddings`` (OpenAI) plus ``layer`` and ``pooling``."""

    input: StrictStr | Prompts | TokenIds
    model: StrictStr | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    layer: StrictInt | None = None
    pooling: Pooling | None = None

    def prompts(self) -> list[str | list[int]]:
        """``input`` as a list of prompts."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, int) for x in self.input):
            return [[int(x) for x in self.input]]  # type: ignore[arg-type]
        return list(self.input)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _no_empty_strings(self) -> EmbeddingsRequest:
        for i, p in enumerate(self.prompts()):
            if isinstance(p, str) and not p:
                raise ValueError(f"input[{i}] is empty")
        return self


class LayerState(BaseModel):
    layer: int
    resolved_layer: int
    hidden_state: Any


class PromptStates(BaseModel):
    index: int
    prompt_tokens: int
    layers: list[LayerState]


class HiddenStatesMetadata(BaseModel):
    num_prompts: int
    hidden_size: int
    dtype: DType  # of the answer's values
    engine_dtype: str  # the engine computed in this
    num_layers: int
    pooling: Pooling
    encoding_format: EncodingFormat


class HiddenStatesResponse(BaseModel):
    """Legacy fields first; ``hidden_states`` holds the first requested layer."""

    hidden_states: list[Any]
    layer: int
    model: str
    prompt_tokens: list[int]
    metadata: HiddenStatesMetadata
    layers: list[int]
    resolved_layers: list[int]
    data: list[PromptStates]


class MapInfo(BaseModel):
    """An alignment map the server applies (``--map``), as ``/health`` lists it."""

    name: str
    source_model: str
    target_model: str
    layers: list[int]  # of the served model, concatenated in this order
    target_layers: list[int]
    pooling: Pooling
    method: str
    input_size: int
    output_size: int


class MappedState(BaseModel):
    index: int
    prompt_tokens: int
    hidden_state: Any


class MappedHiddenStatesResponse(BaseModel):
    """``/v1/hidden_states`` with ``map``: one target-space vector per prompt (per token
    for ``all``) in ``hidden_states`` and ``data``; ``layers`` are the source layers the
    map read; ``metadata.hidden_size`` is the size of the answer's vectors."""

    hidden_states: list[Any]
    layer: int
    model: str
    prompt_tokens: list[int]
    metadata: HiddenStatesMetadata
    layers: list[int]
    resolved_layers: list[int]
    map: MapInfo
    data: list[MappedState]


class Limits(BaseModel):
    """What one request may ask for (clients batch by these)."""

    max_prompts_per_request: int
    max_tokens_per_request: int
    max_response_bytes: int


class Health(BaseModel):
    """``GET /health``: 200 with ``status: "healthy"`` only when requests are served
    (the seed clients test ``status === 'healthy'``); 503 with ``loading`` or
    ``draining`` otherwise."""

    status: Literal["healthy", "loading", "draining"]
    model: str
    num_layers: int
    hidden_size: int
    max_model_len: int
    dtype: str  # the engine's compute dtype
    device: str  # cpu, cuda, ...
    gpu: str | None  # the accelerator's name; null on CPU
    memory: str  # model weights in the engine, e.g. "7.84GB" (the seed's format)
    weights_bytes: int
    limits: Limits
    maps: list[MapInfo] = []
