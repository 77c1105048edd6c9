"""Small random-weight models for tests, the demo and benchmarks, built offline.

A model is a transformers config saved with ``save_pretrained`` (fixed seed, so the
weights are reproducible) next to a byte-level BPE tokenizer trained with
``tokenizers`` on a small built-in corpus and saved as a HF fast tokenizer with a
chat template. vLLM then loads the directory like any local checkpoint.

Three architectures with different decoder-layer structure:

* ``llama``: RMSNorm, rotary positions, gated MLP; vLLM's layer returns
  ``(hidden, residual)``.
* ``gpt2``: LayerNorm, learned positions, GELU MLP; vLLM's block returns one tensor.
* ``qwen2``: Llama's structure plus q/k/v biases (drawn at random here: transformers
  initialises them to zero, which would hide a bias that was not applied).

Usage: ``python tests/tiny_model.py --arch llama --layers 4 --hidden 256``
prints the model directory (cached under ``${LAMINA_CACHE:-~/.cache/lamina}/models``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHS = ("llama", "gpt2", "qwen2")

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """\
What is AI? Artificial intelligence is the study of machines that learn.
The residual stream of a transformer carries information between layers.
Hidden states of a language model can be probed, steered and aligned.
Kubernetes runs containers in pods; an operator reconciles custom resources.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs.
Once upon a time there was a small model with random weights and a tiny vocabulary.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols like + - * / = ( ) [ ] { }.
Questions, answers, prompts, completions, embeddings, tokens, layers, vectors.
"""


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model; every field is part of the cache key."""

    arch: str = "llama"
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    vocab: int = 512
    max_positions: int = 1024
    seed: int = 0

    @property
    def key(self) -> str:
        return (
            f"{self.arch}-l{self.layers}-h{self.hidden}-a{self.heads}-kv{self.kv_heads}"
            f"-i{self.intermediate}-v{self.vocab}-p{self.max_positions}-s{self.seed}-r1"
        )

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        if self.hidden // self.heads < 64:
            # vLLM's CPU attention kernels reject small head sizes (e.g. 16).
            raise ValueError("head_dim (hidden / heads) must be >= 64")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be divisible by kv_heads")


def cache_root() -> Path:
    """``${LAMINA_CACHE:-~/.cache/lamina}/models``."""
    base = os.environ.get("LAMINA_CACHE") or str(Path.home() / ".cache" / "lamina")
    return Path(base) / "models"


def _train_tokenizer(spec: TinyModelSpec, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = "<s>", "</s>", "<pad>"
    tok = Tokenizer(models.BPE())
    # Byte-level: every Unicode string is encodable, so fuzzed prompts never fail.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=[pad, bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    if spec.arch == "llama":
        # Llama tokenizers prepend BOS; GPT-2 ones do not.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
        )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def _build_model(spec: TinyModelSpec, out: Path) -> None:
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(spec.seed)
    model: torch.nn.Module
    # Llama and Qwen2 share the decoder's shape; Qwen2 adds q/k/v biases.
    decoder: dict[str, Any] = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        dtype="float32",
    )
    if spec.arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**decoder))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    param.normal_(std=0.5)
    elif spec.arch == "llama":
        config = LlamaConfig(**decoder, head_dim=spec.hidden // spec.heads)
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    else:
        gcfg = GPT2Config(
            vocab_size=spec.vocab,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.intermediate,
            n_positions=spec.max_positions,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            dtype="float32",
        )
        model = GPT2LMHeadModel(gcfg)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out), safe_serialization=True)


def ensure_tiny_model(spec: TinyModelSpec) -> Path:
    """Build the model described by ``spec`` unless cached; return its directory."""
    spec.validate()
    root = cache_root()
    final = root / spec.key
    if (final / "config.json").exists() and (final / "tokenizer.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=root))
    try:
        _train_tokenizer(spec, tmp)
        _build_model(spec, tmp)
        try:
            tmp.rename(final)
        except OSError:
            # Another process won the race; its copy is identical (fixed seed).
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def main(argv: list[str] | None = None) -> None:
    """CLI: build (or find) a tiny model and print its path."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    d = TinyModelSpec()
    p.add_argument("--arch", choices=ARCHS, default=d.arch)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--kv-heads", type=int, default=d.kv_heads)
    p.add_argument("--intermediate", type=int, default=d.intermediate)
    p.add_argument("--vocab", type=int, default=d.vocab)
    p.add_argument("--max-positions", type=int, default=d.max_positions)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    spec = TinyModelSpec(
        arch=a.arch,
        layers=a.layers,
        hidden=a.hidden,
        heads=a.heads,
        kv_heads=a.kv_heads,
        intermediate=a.intermediate,
        vocab=a.vocab,
        max_positions=a.max_positions,
        seed=a.seed,
    )
    print(ensure_tiny_model(spec))


if __name__ == "__main__":
    main()
