"""Lamina server: vLLM with forward hooks that return hidden states over HTTP.

``python -m lamina_server --model <hf id or path> [vLLM flags] [Lamina flags]`` runs
vLLM's own OpenAI-compatible server (completions, chat, models, vLLM's metrics) with:

``POST /v1/hidden_states``
    ``{"prompts": [text | token ids, ...], "layers": [-2] | "layer": -2,
    "pooling": "last"|"mean"|"all", "encoding_format": "float"|"base64",
    "dtype": "float32"|"float16"|"bfloat16"}`` (plus the legacy ``max_tokens``,
    ``temperature``, ``return_hidden_states``, accepted and ignored) ->
    ``{"hidden_states": [first layer, one entry per prompt], "layer", "model",
    "prompt_tokens", "metadata": {"num_prompts", "hidden_size", "dtype", ...},
    "layers", "resolved_layers", "data": [{"index", "prompt_tokens",
    "layers": [{"layer", "resolved_layer", "hidden_state"}]}]}``.
    ``Accept: application/octet-stream`` returns a safetensors file instead
    (``layer.<L>`` = ``[prompts, hidden]``, or ``prompt.<i>.layer.<L>`` for ``all``).
``POST /v1/embeddings``
    OpenAI shape; a pooled hidden state (``layer``/``pooling`` extensions, server
    defaults otherwise).
``POST /v1/completions`` with ``"output_hidden_states": true | {layers, pooling, ...}``
    adds the prompt's hidden states under ``"hidden_states"`` (not with streaming).
``GET /health`` (``status, model, num_layers, hidden_size``), ``/healthz`` (liveness),
``/readyz`` (warm and not draining), ``/metrics`` (Prometheus: ``lamina_*`` + ``vllm:*``).

Layer ``i`` is the residual stream after decoder layer ``i`` = transformers'
``hidden_states[i + 1]``; ``-1`` is the last layer *before* the final norm.

Errors: ``{"error": {"message", "type", "code"}}``; 422 invalid (also malformed JSON
and unknown fields), 413 too many prompts/tokens/bytes, 429 queue full (Retry-After),
503 loading or draining, 401 bad API key (``LAMINA_API_KEY``), 500 engine.

Module map: ``config`` (CLI/env), ``protocol`` (request/response models), ``layers``,
``encoding``, ``limits``, ``metrics``, ``errors``, ``service`` (the logic,
engine-agnostic), ``app`` + ``completions`` (HTTP), ``capture`` (worker extension,
torch only), ``engine`` (the only module importing vLLM). Test models: ``tests/tiny_model.py``.
"""
