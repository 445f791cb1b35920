"""Fed-SB: fixed B and A around a trainable r×r core R; the server averages R, exactly.

Paper: R. Singhal, K. Ponkshe, R. Vartak, L. R. Varshney, P. Vepakomma, "Fed-SB: A Silver
Bullet for Extreme Communication Efficiency and Performance in (Private) Federated LoRA
Fine-Tuning", arXiv 2502.15436 (built on LoRA-SB). Every layer's update is ``s·B·R·A`` with
``B`` (m×r) and ``A`` (r×n) fixed and shared by all clients, and only the r×r core ``R``
trained. The server averages the cores, ``R̄ = Σ p_k R_k``; because ``B`` and ``A`` are
shared, ``s·B·R̄·A = Σ p_k s B R_k A`` exactly. Uploads and broadcasts are r² values per
layer, independent of the layer's width and of the number of clients.

Invariants (tests/methods/test_fed_sb.py, float64 references): the global update after a
round equals the weighted mean of the clients' own ``s·B·R_k·A``; ``B`` and ``A`` never
change and are bit-identical on every party; only ``R`` trains (the layer computes with
``B·R``, :mod:`fedlora.train.subspace`).

Departures and choices:

- Initialisation. LoRA-SB, and the authors' code, derive ``B``, ``A`` and the starting
  ``R`` from a truncated SVD of an estimated full fine-tuning gradient computed on the
  pooled training data before federation starts, so the model begins one approximate
  gradient step away from the base. Pooled data is what a federation cannot have, so
  fedlora starts from data-free factors instead: ``B`` and ``A`` are drawn from the run's
  public seed with the portable generator (``U(±√(3/m))`` and ``U(±√(3/n))``: unit-variance
  columns of ``B`` and rows of ``A``, nearly orthonormal for r ≪ m, n), and ``R = 0``, so the
  run starts at the base model like every other method. Expect lower accuracy than the
  paper's per round; the exactness and the r² traffic are unchanged.
- ``B`` and ``A`` never travel: every party rebuilds them from the seed (as FFA-LoRA's A).
  Round 1's broadcast is ``R = 0`` as empty entries.
- Aggregation weights follow ``setup.weighting``; uploads are summed in client-id order.
- One rank and alpha for all clients (mixed ranks are refused: the paper has none). Central
  DP composes (the server step is a weighted sum of the uploads, the paper's private setting).

The project's reference for this method's maths and invariants: docs/methods.md ("Fed-SB").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.methods import synced
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    EntrySpec,
    Factored,
    Lora,
    LoraPair,
    Payload,
    Schema,
    ServerState,
    Setup,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import dense, empty_sparse, key
from fedlora.methods.registry import register
from fedlora.methods.stacked import ordered, weighted_sum
from fedlora.ops.seeded_init import portable_uniform
from fedlora.ops.seeds import label_seed


@dataclass(frozen=True)
class FedSbConfig:
    """Fed-SB has no options of its own."""


@dataclass(frozen=True)
class FixedFactors:
    """The shared, never-trained factors of one layer: ``B`` (m×r) and ``A`` (r×n)."""

    B: Tensor
    A: Tensor


def fixed_factors(setup: Setup, layer: str) -> FixedFactors:
    """``B`` and ``A`` of ``layer`` from the run's public seed (bit-identical everywhere)."""
    spec, rank = setup.layer(layer), setup.max_rank
    m, n = spec.out_features, spec.in_features
    b_bound, a_bound = math.sqrt(3.0 / m), math.sqrt(3.0 / n)
    return FixedFactors(
        B=portable_uniform(
            label_seed(setup.seed, "fed_sb", layer, "B"), (m, rank), -b_bound, b_bound
        ),
        A=portable_uniform(
            label_seed(setup.seed, "fed_sb", layer, "A"), (rank, n), -a_bound, a_bound
        ),
    )


def _core_state(round_: int, cores: Mapping[str, Tensor]) -> ServerState:
    return ServerState(round=round_, tensors={key(layer, "R"): r for layer, r in cores.items()})


def upload_core(upload: Upload, setup: Setup, layer: str) -> Tensor:
    """Client ``upload``'s trained core of ``layer`` (shape checked by the strict decoder)."""
    return dense(upload.payload[key(layer, "R")])


@register("fed_sb", FedSbConfig)
class FedSb(synced.SharedAdapter[FedSbConfig]):
    """Fed-SB (see module docstring)."""

    name = "fed_sb"
    dp_refusal = None  # the server step is a weighted sum of the uploads
    secure_refusal = None  # the same mean, of the masked changes

    def init_server(self) -> ServerState:
        rank = self.setup.max_rank
        return _core_state(0, {s.name: torch.zeros(rank, rank) for s in self.setup.layers})

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        scaling = self.setup.clients[0].scaling
        out: dict[str, Factored] = {}
        for s in self.setup.layers:
            fixed = fixed_factors(self.setup, s.name)
            out[s.name] = (scaling * (fixed.B @ state.tensors[key(s.name, "R")]), fixed.A)
        return out

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        rank = client.rank
        if state.round == 0:
            return {key(s.name, "R"): empty_sparse((rank, rank)) for s in self.setup.layers}
        return {name: r.clone() for name, r in state.tensors.items()}

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        adapter: Lora = {}
        basis: dict[str, Tensor] = {}
        for s in self.setup.layers:
            fixed = fixed_factors(self.setup, s.name)
            adapter[s.name] = LoraPair(fixed.A, dense(payload[key(s.name, "R")]).clone())
            basis[s.name] = fixed.B
        return ClientStart(adapter=adapter, trainable=frozenset({"B"}), b_basis=basis)

    def upload_schema(self, client: ClientSpec) -> Schema:
        return {key(s.name, "R"): EntrySpec((client.rank, client.rank)) for s in self.setup.layers}

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return {key(layer, "R"): pair.B.detach().clone() for layer, pair in trained.items()}

    def upload_reference(self, start: ClientStart, client: ClientSpec) -> dict[str, Tensor]:
        return {key(layer, "R"): pair.B for layer, pair in start.adapter.items()}

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ups = ordered(uploads)
        weights = aggregation_weights(ups, self.setup.weighting)
        return _core_state(
            state.round + 1,
            {
                s.name: weighted_sum([upload_core(u, self.setup, s.name) for u in ups], weights)
                for s in self.setup.layers
            },
        )
