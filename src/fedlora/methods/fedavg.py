"""FedIT / FedAvg: average the LoRA factors A and B separately.

Paper: Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning"
(FedIT, ICASSP 2024), which applies FedAvg (McMahan et al., 2017, Eq. 1 there) to LoRA:
``Ā = Σ p_k A_k``, ``B̄ = Σ p_k B_k`` with ``p_k = n_k / Σ n_j``.

Departures and choices:

- Heterogeneous ranks use zero-padding (HetLoRA/FLoRA convention): factors are padded to
  the largest rank before averaging, and a client of rank ``r_k`` receives the first ``r_k``
  rows of ``Ā`` and columns of ``B̄``. A slot that no sampled client trained (higher than
  every sampled rank) averages to ``A = B = 0``; the option ``pad`` decides what a client
  starts such a slot from: ``fresh`` (default) a seeded PEFT init of ``A`` with ``B = 0``
  (product unchanged, the slot can train again), ``zeros`` leaves it dead.
- Round 1's broadcast is the fresh PEFT init, sent as seeds and the init rule
  (``common.initial_payload``), not as dense ``A``.
- The FLoRA repository's FedIT keeps only client 0 (a ``weighted_sindgle_weights`` typo);
  this module averages all clients.
- The global model's update is ``s_g·B̄·Ā`` with ``s_g`` = global alpha / max rank. Averaging
  the factors separately is inexact (``B̄Ā ≠ Σ p_k B_k A_k``): that is the method's known flaw,
  kept on purpose.

The project's reference for this method's maths and invariants: docs/methods.md
("FedIT / FedAvg").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    Lora,
    LoraPair,
    Payload,
    ServerState,
    Setup,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import (
    MethodBase,
    PadConfig,
    apply_pad,
    fresh_lora,
    initial_payload,
    lora_from_payload,
    lora_payload,
    pad_rank,
)
from fedlora.methods.registry import register


@dataclass(frozen=True)
class FedAvgConfig(PadConfig):
    """``pad``: "fresh" or "zeros", how a client fills slots that carry nothing."""


def average_factors(uploads: Sequence[Upload], setup: Setup) -> Lora:
    """``Σ p_k A_k`` and ``Σ p_k B_k`` per layer, zero-padded to the largest rank."""
    # Sum in client-id order so the result does not depend on arrival order, even in the
    # last bit; accumulate in the uploads' own precision.
    uploads = sorted(uploads, key=lambda u: u.cid)
    weights = aggregation_weights(uploads, setup.weighting)
    rank = setup.max_rank
    adapters = [lora_from_payload(up.payload, setup) for up in uploads]
    out: Lora = {}
    for spec in setup.layers:
        dtype = adapters[0][spec.name].A.dtype
        a_sum = torch.zeros(rank, spec.in_features, dtype=dtype)
        b_sum = torch.zeros(spec.out_features, rank, dtype=dtype)
        for p, adapter in zip(weights, adapters, strict=True):
            pair = pad_rank(adapter[spec.name], rank)
            a_sum += p * pair.A
            b_sum += p * pair.B
        out[spec.name] = LoraPair(a_sum, b_sum)
    return out


def state_from_lora(round_: int, adapter: Lora) -> ServerState:
    return ServerState(round=round_, tensors=lora_payload(adapter))  # type: ignore[arg-type]


def lora_from_state(state: ServerState, setup: Setup) -> Lora:
    return lora_from_payload(state.tensors, setup)  # type: ignore[arg-type]


ConfigT = TypeVar("ConfigT", bound=PadConfig)
"""Config type of a FedAvg-based method: subclasses (FedProx) bring their own options."""


@register("fedavg", FedAvgConfig)
class FedAvg(MethodBase[ConfigT]):
    """FedIT: separate weighted averages of A and B (see module docstring)."""

    dp_refusal = None  # the server step is a weighted sum of the uploads
    secure_refusal = None  # the same mean, of the masked changes

    name = "fedavg"

    def init_server(self) -> ServerState:
        return state_from_lora(0, fresh_lora(self.setup, self.setup.max_rank, self.setup.seed))

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return initial_payload(self.setup, client.rank, self.setup.seed)
        adapter = lora_from_state(state, self.setup)
        return lora_payload({n: pad_rank(p, client.rank) for n, p in adapter.items()})

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        adapter = lora_from_payload(payload, self.setup)
        return ClientStart(adapter=apply_pad(adapter, self.setup, self.config.pad))

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return lora_payload(trained)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        return state_from_lora(state.round + 1, average_factors(uploads, self.setup))

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        scaling = self.setup.global_alpha / self.setup.max_rank
        return {n: (scaling * p.B, p.A) for n, p in lora_from_state(state, self.setup).items()}
