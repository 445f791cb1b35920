"""FedProx on LoRA: FedAvg plus a proximal term in every client's local loss.

Paper: Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020, arXiv 1812.06127: client k minimises
``h_k(θ; θ^t) = F_k(θ) + μ/2 ||θ − θ^t||²`` (the proximal objective of Section 3).
Here ``θ`` is the client's LoRA factors and ``θ^t`` the adapter it started the round from;
everything else (upload, aggregation, broadcast, zero-padding of heterogeneous ranks) is
FedAvg's (``fedavg.FedAvg``), inherited rather than repeated.

Departures and choices:

- The proximal term covers the trainable LoRA factors only (the frozen base weights never
  move, so their term is zero); a factor frozen by ``ClientStart.trainable`` is skipped.
- ``mu = 0`` returns no term (``None``): FedProx then is FedAvg.
- The paper's inexact-solver tolerance γ and its client-side partial work are not modelled;
  the number of local steps is a training setting.

The project's reference for this method's maths and invariants: docs/methods.md
("FedProx").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedlora.methods.base import ClientStart, Lora, Tensor
from fedlora.methods.common import PadConfig
from fedlora.methods.fedavg import FedAvg
from fedlora.methods.registry import register
from fedlora.validate import number


@dataclass(frozen=True)
class FedProxConfig(PadConfig):
    """``mu``: weight of the proximal term ``mu/2 · ||θ − θ_start||²`` (>= 0); ``pad``: as
    FedAvg's ("fresh" or "zeros")."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        number("mu", self.mu, at_least=0.0, below=math.inf)
        super().__post_init__()


def proximal_term(current: Lora, start: ClientStart, mu: float) -> Tensor:
    """``mu/2 · Σ ||θ − θ_start||²`` over the trainable factors of every layer.

    Differentiable with respect to ``current``; the start adapter is treated as a constant.
    """
    total: Tensor | None = None
    for layer, ref in start.adapter.items():
        now = current[layer]
        for part in sorted(start.trainable):
            diff = getattr(now, part) - getattr(ref, part).detach()
            sq = (diff * diff).sum()
            total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    return 0.5 * mu * total


@register("fedprox", FedProxConfig)
class FedProx(FedAvg[FedProxConfig]):
    """FedAvg with the FedProx proximal term (see module docstring)."""

    name = "fedprox"

    def regulariser(self, current: Lora, start: ClientStart) -> Tensor | None:
        if self.config.mu == 0:
            return None
        return proximal_term(current, start, self.config.mu)
