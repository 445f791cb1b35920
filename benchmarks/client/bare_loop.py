"""The bare PyTorch + PEFT training loop that ``python -m benchmarks.client`` compares against.

A PEFT LoRA model built straight from the same base model (same device, dtype, rank, alpha,
target modules, LoRA dropout and gradient checkpointing), AdamW over the same LoRA factors the method trains, gradient
clipping and accumulation as configured, on exactly the token tensors fedlora's client sees
(same sampler seed, same collation, computed before the clock starts). The timed region holds
only PyTorch/PEFT calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.config import RunConfig, TrainConfig
from fedlora.methods.base import ClientSpec
from fedlora.train.batches import Encoded
from fedlora.train.batching import batch_of, sampler


@dataclass(frozen=True)
class Plan:
    """The micro-batches ``train_local`` draws with one seed: ``[step][micro] -> batch``
    (already on the device), and how many real (non-padding) tokens they hold."""

    batches: list[list[dict[str, torch.Tensor]]]
    tokens: int


def plan_batches(
    examples: Sequence[Encoded],
    train: TrainConfig,
    seed: int,
    pad_id: int,
    device: torch.device | None = None,
) -> Plan:
    """Same sampler, same order, same layout (``train.batching``) as ``train_local``, so the
    bare loop sees identical tensors."""
    draw = sampler(examples, train.batching, train.batch_size, seed)
    batches: list[list[dict[str, torch.Tensor]]] = []
    tokens = 0
    for _ in range(train.local_steps):
        step = []
        for _ in range(train.grad_accum_steps):
            picked = [examples[i] for i in draw.take(train.batch_size)]
            tokens += sum(len(e.input_ids) for e in picked)
            step.append(batch_of(picked, train.batching, pad_id, train.seq_len, device))
        batches.append(step)
    return Plan(batches, tokens)


def bare_peft_model(cfg: RunConfig, client: ClientSpec) -> nn.Module:
    """A fresh copy of the base model with one plain PEFT LoRA adapter of ``client``'s shape."""
    from peft import LoraConfig, get_peft_model

    from fedlora.models.placement import load_base, placement

    place = placement(cfg.model, cfg.train.device)
    model, _ = load_base(
        cfg.model, place, seed=cfg.seed, gradient_checkpointing=cfg.train.gradient_checkpointing
    )
    # PEFT annotates lora_alpha as int but uses it as a number; fedlora's slots pass the
    # same float, so the scaling is identical.
    lora = LoraConfig(
        r=client.rank,
        lora_alpha=client.alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.peft_targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def bare_params(model: nn.Module, factors: frozenset[str]) -> list[nn.Parameter]:
    """Make exactly the LoRA ``factors`` ("A", "B") trainable; return them."""
    params: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        wanted = any(f"lora_{f}." in name for f in factors)
        p.requires_grad_(wanted)
        if wanted:
            params.append(p)
    return params


def bare_train(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    batches: Sequence[Sequence[dict[str, torch.Tensor]]],
    train: TrainConfig,
) -> float:
    """One round of plain PyTorch + PEFT training on ``batches``; returns its wall seconds.

    Mirrors ``train_local``'s optimisation (fresh AdamW, accumulation, clipping) with nothing
    else in the timed region.
    """
    began = time.perf_counter()
    optimiser = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    model.train()
    for step in batches:
        optimiser.zero_grad(set_to_none=True)
        for batch in step:
            (model(**batch).loss / len(step)).backward()
        if train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimiser.step()
    model.eval()
    return time.perf_counter() - began
