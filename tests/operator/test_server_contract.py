"""The operator renders the server's command line; the server must read it as meant."""

from __future__ import annotations

import pytest
from lamina_operator.render import server_args
from lamina_operator.spec import HiddenStateLimits, LLMDeploymentSpec
from lamina_server.config import LaminaSettings, parse_command_line

SPEC = LLMDeploymentSpec.model_validate(
    {
        "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "bfloat16"},
        "engine": {"tensorParallelSize": 4, "maxNumBatchedTokens": 8192, "maxNumSeqs": 64},
        "hiddenStates": {
            "defaultLayers": [-2, 40],
            "allowedLayers": [-2, -1, 40],
            "defaultPooling": "mean",
            "limits": {
                "maxPromptsPerRequest": 8,
                "maxResponseBytes": 1048576,
                "maxBodyBytes": 2097152,
                "maxJsonDepth": 32,
                "maxJsonArrayItems": 131072,
                "maxJsonValues": 262144,
                "maxPromptChars": 50000,
                "maxChatItems": 64,
                "maxHeaderBytes": 16384,
            },
        },
    }
)


def test_lamina_settings_come_through() -> None:
    settings, _ = parse_command_line(server_args(SPEC), env={})
    assert settings.default_layers == (-2, 40)
    assert settings.allowed_layers == (-2, -1, 40)
    assert settings.default_pooling == "mean"
    assert settings.max_prompts_per_request == 8
    assert settings.max_response_bytes == 1048576
    assert settings.drain_timeout_seconds == 53
    assert (settings.max_body_bytes, settings.max_json_depth) == (2097152, 32)
    assert (settings.max_json_array_items, settings.max_json_values) == (131072, 262144)
    assert (settings.max_prompt_chars, settings.max_chat_items) == (50000, 64)
    assert settings.max_header_bytes == 16384


def test_limits_default_to_the_servers_own_defaults() -> None:
    """A pod with no limits in its spec runs with the limits the server has alone."""
    settings, _ = parse_command_line(
        server_args(LLMDeploymentSpec.model_validate({"model": {"name": "m"}})), env={}
    )
    defaults = LaminaSettings()
    for name in HiddenStateLimits.model_fields:
        assert (
            getattr(settings, name) == getattr(defaults, name) == getattr(HiddenStateLimits(), name)
        ), name


@pytest.mark.vllm
def test_vllm_reads_the_engine_flags() -> None:
    from lamina_server.engine import parse_vllm_args

    _, vllm_argv = parse_command_line(server_args(SPEC), env={})
    args = parse_vllm_args(vllm_argv)
    assert args.model == "meta-llama/Llama-3.1-70B-Instruct"
    assert args.tensor_parallel_size == 4
    assert args.max_num_batched_tokens == 8192
    assert args.max_num_seqs == 64
    assert args.dtype == "bfloat16"
    assert args.enable_prefix_caching is True
    assert args.port == 8000
