"""Tiny Llama and Qwen2 models built in code, for tests and quick experiments.

Both use the same shape (hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 128) so they
exercise grouped-query attention and every projection LoRA targets, yet build in
milliseconds. Weights come from the architecture's own initialiser under a seed, drawn in
a forked RNG so the caller's global torch RNG is left exactly as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from fedlora.models.tokenizer import BYTE_VOCAB_SIZE, build_byte_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

TinyArch = Literal["llama", "qwen2"]

#: Shape shared by the tiny models.
TINY_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}


def tiny_config(arch: TinyArch) -> PretrainedConfig:
    """Return the config of a tiny ``arch`` model whose vocabulary is the byte tokenizer's.

    Parameters
    ----------
    arch
        ``"llama"`` or ``"qwen2"``.

    Returns
    -------
    PretrainedConfig
        A ``LlamaConfig`` or ``Qwen2Config`` with :data:`TINY_SHAPE`, float32 and
        untied embeddings (so the LM head is a separate matrix, as in most real models).
    """
    from transformers import LlamaConfig, Qwen2Config

    tokenizer_ids = {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    # Any: the config classes take many differently typed keywords; these are all ints/bools.
    common: dict[str, Any] = {**TINY_SHAPE, **tokenizer_ids, "vocab_size": BYTE_VOCAB_SIZE}
    common["tie_word_embeddings"] = False
    if arch == "llama":
        config: PretrainedConfig = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected 'llama' or 'qwen2'")
    config.dtype = torch.float32
    return config


def build_tiny_model(
    arch: TinyArch, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build a tiny causal LM and its byte-level tokenizer, deterministically.

    Parameters
    ----------
    arch
        ``"llama"`` or ``"qwen2"``.
    seed
        Seed of the weight initialisation; the same seed gives bit-identical weights.
    dtype
        Precision of the returned weights (drawn in float32, then cast, so every dtype
        rounds the same weights).

    Returns
    -------
    tuple[PreTrainedModel, PreTrainedTokenizerBase]
        The model (``dtype``, eval mode, CPU) and the tokenizer from
        :func:`~fedlora.models.tokenizer.build_byte_tokenizer`.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    # fork_rng restores the global CPU generator on exit: seeding here must not change what
    # the caller's later random draws produce.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(dtype)
    model.eval()
    return model, build_byte_tokenizer()
