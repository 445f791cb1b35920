"""TRL's ``SFTTrainer`` on one client's round: what FlowerTune and OpenFedLLM clients run.

Same base model, dtype, device, LoRA adapter (rank, alpha, targets, dropout), batch size,
accumulation, sequence length, optimiser (AdamW, constant learning rate, clipping) and
gradient checkpointing as fedlora's client; the examples are fedlora's own token sequences
(``input_ids`` and completion-only ``labels``, so TRL skips its tokenisation), and TRL pads
and batches them with its own collator and sampler. A fresh trainer per round, as those
clients build one; only ``trainer.train()`` is timed, and the tokens it trained on are counted
from the batches the model was trained on. A benchmark-only dependency (``fedlora[bench]``).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedlora.config import RunConfig
from fedlora.models.placement import device_of
from fedlora.train.batches import Encoded


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


@dataclass(frozen=True)
class TrlSample:
    seconds: float
    tokens: int


class _TokenCounter:
    """Counts the non-padding tokens of every training forward of a model (a pre-hook on
    its top module: TRL's loader may collate a batch ahead that it never trains on)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        if mask is not None:
            self.tokens += int(mask.sum())
        elif ids is not None:  # padding-free: every position is a real token
            self.tokens += int(ids.numel())


def trl_round(
    cfg: RunConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Encoded],
    seed: int,
) -> TrlSample:
    """One local run of ``cfg.train.local_steps`` optimiser steps with ``SFTTrainer`` on
    ``model`` (a PEFT model, see :func:`benchmarks.client.bare_loop.bare_peft_model`)."""
    return _train(cfg, model, tokenizer, examples, seed, cfg.train.batch_size, packing=False)


def trl_packed_round(
    cfg: RunConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Encoded],
    mean_length: float,
    seed: int,
) -> TrlSample:
    """TRL at its fastest here: best-fit-decreasing packing into rows of ``seq_len`` (which
    TRL trains padding-free), as many rows per step as hold ``batch_size`` examples of
    ``mean_length`` tokens, so a step's real-token budget is about fedlora's."""
    t = cfg.train
    rows = max(1, round(t.batch_size * mean_length / t.seq_len))
    return _train(cfg, model, tokenizer, examples, seed, rows, packing=True)


def _train(
    cfg: RunConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Encoded],
    seed: int,
    batch_size: int,
    packing: bool,
) -> TrlSample:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    device = device_of(model)
    data = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    )
    with tempfile.TemporaryDirectory(prefix="fedlora-trl-") as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=t.grad_accum_steps,
            max_steps=t.local_steps,
            learning_rate=t.lr,
            lr_scheduler_type="constant",
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            optim="adamw_torch",
            max_length=t.seq_len,
            packing=packing,
            gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
            seed=seed,
        )
        trainer = SFTTrainer(
            model=model,  # type: ignore[arg-type]  # a PeftModel, typed as its Module base
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
        )
        counter = _TokenCounter(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        trainer.train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        counter.handle.remove()
    model.eval()
    return TrlSample(seconds=seconds, tokens=counter.tokens)
