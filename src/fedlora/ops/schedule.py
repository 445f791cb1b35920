"""Learning-rate schedules of local training (``train.lr_schedule``).

- ``constant``: ``lr`` every step.
- ``cosine``: round-aware cosine over the whole federation, as FlowerTune and OpenFedLLM
  schedule it: round ``t`` of ``T`` (1-based) trains at
  ``min_lr + (lr − min_lr)·(1 + cos(π·(t−1)/T))/2``, constant within the round.
- ``linear``: linear decay within each local run, as the FLoRIST code (Hugging Face's
  linear schedule, restarted every round): after warmup, step ``s`` of ``S`` (0-based)
  trains at ``lr·(S − s)/(S − W)`` (``lr·(1 − s/S)`` without warmup; ``min_lr`` is not used).

``warmup_steps`` (``W``) ramps every schedule linearly over the first ``W`` optimiser steps of
each local run (each round starts a fresh optimiser, the federated convention): step
``s < W`` trains at ``lr_round·(s+1)/W``. (Hugging Face starts the ramp at 0, which wastes
the first step; here the first step already moves.)
"""

from __future__ import annotations

import math

from fedlora.validate import one_of

SCHEDULES = ("constant", "cosine", "linear")


def round_lr(schedule: str, lr: float, min_lr: float, round_: int, rounds: int) -> float:
    """The learning rate a schedule gives round ``round_`` of ``rounds`` (before warmup and
    any within-round decay)."""
    if schedule == "cosine":
        if rounds < 1 or not 1 <= round_ <= rounds:
            raise ValueError(f"round {round_} is outside 1..{rounds}")
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (round_ - 1) / rounds)) / 2
    if schedule in ("constant", "linear"):
        return lr
    one_of("lr_schedule", schedule, SCHEDULES)
    raise AssertionError("unreachable")


def step_lr(
    schedule: str,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    round_: int,
    rounds: int,
    step: int,
    steps: int,
) -> float:
    """The learning rate of local optimiser step ``step`` (0-based) of ``steps`` in round
    ``round_`` of ``rounds`` (see the module docstring)."""
    if not 0 <= step < steps:
        raise ValueError(f"step {step} is outside 0..{steps - 1}")
    base = round_lr(schedule, lr, min_lr, round_, rounds)
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "linear":
        return base * (steps - step) / max(1, steps - warmup_steps)
    return base
