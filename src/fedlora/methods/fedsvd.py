"""FedSVD: clients train B only; the server re-factorises ``B̄·A`` by an SVD every round.

Paper: S. Lee, S. Seo, J. Kim, J. Lee, S. J. Hwang, "FedSVD: Adaptive Orthogonalization for
Private Federated Learning with LoRA", NeurIPS 2025, arXiv 2505.12805. All clients share the
global adapter ``(A, B)``. Each round every client freezes ``A`` and trains ``B``; the server
averages ``B̄ = Σ p_k B_k`` (exact, since ``A`` is shared: ``s·B̄·A = Σ p_k s B_k A``), then
takes the SVD ``B̄·A = U S Vᵀ`` and sets ``A ← Vᵀ`` (orthonormal rows) and ``B ← U S`` for the
next round. The product is unchanged; what changes is the basis B trains against: ``A``'s rows
become the right singular vectors of the current update, ordered by their singular values.

Invariants (tests/methods/test_fedsvd.py, float64 references): after a round,
``s·B_new·A_new = Σ p_k s B_k A`` exactly, ``A_new A_newᵀ = I``, ``B_newᵀ B_new`` is diagonal
with non-increasing entries; ``A`` never trains.

How fedlora carries it:

- The SVD is the factored one (:func:`fedlora.ops.factored.factored_svd`: QRs of ``B̄``
  (m×r) and ``Aᵀ`` (n×r) and an r×r SVD); the m×n product is never formed. The authors' code
  forms it densely; the result is the same.
- Round 1's broadcast is the initial adapter as seeds and the init rule (``A`` PEFT's init,
  ``B = 0``); later broadcasts send the new ``A`` and ``B`` densely (both change every
  round), uploads send ``B`` only.
- The re-factorisation runs every round (the authors' default period of 1, no warm-up).
- Aggregation weights follow ``setup.weighting``; uploads are summed in client-id order.
- One rank and alpha for all clients (mixed ranks are refused). Central DP composes: the
  server step is a weighted mean of the uploads followed by post-processing (the SVD), which
  costs no privacy (the paper's DP setting).

The project's reference for this method's maths and invariants: docs/methods.md ("FedSVD").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.methods import synced
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Lora,
    LoraPair,
    Payload,
    Schema,
    ServerState,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import initial_payload, key, lora_from_payload, lora_schema
from fedlora.methods.registry import register
from fedlora.methods.stacked import client_b, ordered, weighted_sum
from fedlora.ops.factored import factored_svd


@dataclass(frozen=True)
class FedSvdConfig:
    """FedSVD has no options of its own."""


def refactorised(b: Tensor, a: Tensor) -> LoraPair:
    """``(A', B')`` with ``B'·A' = b·a``, ``A'`` with orthonormal rows (the right singular
    vectors of ``b·a``) and ``B' = U S``, from the factored SVD (no m×n matrix)."""
    u, s, v = factored_svd(b, a)
    new_a = torch.zeros_like(a)
    new_b = torch.zeros_like(b)
    k = s.numel()
    new_a[:k] = v.T
    new_b[:, :k] = u * s
    return LoraPair(new_a, new_b)


@register("fedsvd", FedSvdConfig)
class FedSvd(synced.SharedAdapter[FedSvdConfig]):
    """FedSVD (see module docstring)."""

    name = "fedsvd"
    dp_refusal = None  # a weighted mean of the uploads, then post-processing
    secure_refusal = None  # the same mean, of the masked changes

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return initial_payload(self.setup, self.setup.max_rank, self.setup.seed)
        return {name: t.clone() for name, t in state.tensors.items()}

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        return ClientStart(
            adapter=lora_from_payload(payload, self.setup), trainable=frozenset({"B"})
        )

    def upload_schema(self, client: ClientSpec) -> Schema:
        return lora_schema(self.setup, client.rank, "B")

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return {key(layer, "B"): pair.B.detach().clone() for layer, pair in trained.items()}

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ups = ordered(uploads)
        weights = aggregation_weights(ups, self.setup.weighting)
        tensors: dict[str, Tensor] = {}
        for s in self.setup.layers:
            b_mean = weighted_sum([client_b(u, self.setup, s.name) for u in ups], weights)
            new = refactorised(b_mean, state.tensors[key(s.name, "A")])
            tensors[key(s.name, "A")], tensors[key(s.name, "B")] = new.A, new.B
        return ServerState(round=state.round + 1, tensors=tensors)
