"""One client's local training: AdamW over the trainable LoRA factors, gradient
accumulation, completion-only loss, an optional extra loss term from the method.

The loss runs the LM head only on the positions it scores (:mod:`fedlora.train.lm_loss`).
Read it top to bottom: copy the start adapter into the slot, mark what trains, loop
``local_steps`` optimiser steps of ``grad_accum_steps`` micro-batches each, copy the result out.
A fresh optimiser each round is the federated convention (no optimiser state is shared).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.config import TrainConfig
from fedlora.methods.base import ClientStart, Lora, Tensor
from fedlora.models.placement import device_of
from fedlora.ops.schedule import step_lr
from fedlora.train.adapters import b_modules, get_lora, live_lora, set_lora, set_trainable
from fedlora.train.batches import Encoded
from fedlora.train.batching import batch_of, sampler
from fedlora.train.lm_loss import completion_only_loss
from fedlora.train.progress import progress
from fedlora.train.subspace import b_in_span, model_form, trained_form
from fedlora.train.timing import Timer, untimed


@dataclass(frozen=True)
class LocalResult:
    """The trained adapter and what it took."""

    adapter: Lora
    mean_loss: float
    tokens: int
    seconds: float
    lrs: tuple[float, ...] = ()
    """The learning rate of each optimiser step (``train.lr_schedule``)."""


@dataclass(frozen=True)
class LocalRun:
    """What a client's local training run takes beyond its model, adapter, data and
    ``train`` config: its seed (batch order and dropout), where it sits in the federation
    (``round`` of ``rounds``, for a round-aware ``train.lr_schedule``), the method's extra
    loss term, and a time limit (``timeout_s > 0``: ``TimeoutError`` once an optimiser step
    ends past it)."""

    seed: int
    round: int = 1
    rounds: int = 1
    regulariser: Callable[[Lora], Tensor | None] | None = None
    timeout_s: float = 0.0


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (CPU, and ``device`` when it is CUDA) for the block,
    then restore what they were."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _backward(
    model: nn.Module,
    batch: dict[str, Tensor],
    accum_steps: int,
    regulariser: Callable[[Lora], Tensor | None] | None,
    live: Lora | None,
) -> float:
    """Accumulate one micro-batch's gradients (loss plus any regulariser); its loss."""
    loss = completion_only_loss(model, batch)
    extra = regulariser(live) if regulariser is not None and live is not None else None
    total = loss if extra is None else loss + extra
    (total / accum_steps).backward()
    return float(loss.detach())


def train_local(
    model: nn.Module,
    slot: str,
    start: ClientStart,
    examples: Sequence[Encoded],
    cfg: TrainConfig,
    pad_id: int,
    run: LocalRun,
    timer: Timer = untimed,
) -> LocalResult:
    """Train ``start.adapter`` in ``slot`` on ``examples`` as ``run`` says and return the
    trained factors; ``timer`` sees the phases listed in :mod:`fedlora.train.timing`."""
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        with timer("swap_in"):
            set_lora(model, slot, model_form(start))
            model.set_adapter(slot)  # type: ignore[operator]
            cores = stack.enter_context(b_in_span(b_modules(model, slot), start))
            params = set_trainable(model, slot, start.trainable)
        loop = _Run(model, slot, examples, cfg, pad_id, run, timer, began)
        try:
            losses, lrs, tokens = loop.steps(params)
        finally:
            model.eval()
            for p in params:
                p.requires_grad_(False)
        with timer("swap_out"):
            adapter = trained_form(get_lora(model, slot), cores)
    return LocalResult(
        adapter=adapter,
        mean_loss=sum(losses) / len(losses),
        tokens=tokens,
        seconds=time.perf_counter() - began,
        lrs=tuple(lrs),
    )


@dataclass(frozen=True)
class _Run:
    """One local training run's fixed inputs (the optimiser loop below reads them)."""

    model: nn.Module
    slot: str
    examples: Sequence[Encoded]
    cfg: TrainConfig
    pad_id: int
    run: LocalRun
    timer: Timer
    began: float

    def steps(self, params: list[nn.Parameter]) -> tuple[list[float], list[float], int]:
        """``local_steps`` AdamW steps of ``grad_accum_steps`` micro-batches each: the
        micro-batch losses, each step's learning rate and the tokens seen."""
        cfg, model, timer, run = self.cfg, self.model, self.timer, self.run
        regulariser = run.regulariser
        device = device_of(model)
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        draw = sampler(self.examples, cfg.batching, cfg.batch_size, run.seed)
        # The slot's parameter objects stay the same all round: look them up once.
        with timer("live_lora"):
            live = live_lora(model, self.slot) if regulariser is not None else None
        model.train()
        losses: list[float] = []
        lrs: list[float] = []
        tokens = 0
        # LoRA dropout draws from torch's global generator: seed it from this client's round
        # (and restore it after) so reruns, resumes and either runtime draw the same masks.
        with (
            seeded_global_rng(run.seed, device),
            progress(cfg.local_steps, "local steps") as bar,
        ):
            for step in range(cfg.local_steps):
                lr = step_lr(
                    cfg.lr_schedule,
                    cfg.lr,
                    cfg.min_lr,
                    cfg.warmup_steps,
                    run.round,
                    run.rounds,
                    step,
                    cfg.local_steps,
                )
                for group in optimiser.param_groups:
                    group["lr"] = lr
                lrs.append(lr)
                optimiser.zero_grad(set_to_none=True)
                for _ in range(cfg.grad_accum_steps):
                    with timer("collate"):
                        picked = [self.examples[i] for i in draw.take(cfg.batch_size)]
                        batch = batch_of(picked, cfg.batching, self.pad_id, cfg.seq_len, device)
                    losses.append(_backward(model, batch, cfg.grad_accum_steps, regulariser, live))
                    tokens += sum(len(e.input_ids) for e in picked)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimiser.step()
                bar.advance(loss=losses[-1])
                if run.timeout_s > 0 and time.perf_counter() - self.began > run.timeout_s:
                    raise TimeoutError(f"local training exceeded {run.timeout_s:g} s")
        return losses, lrs, tokens
