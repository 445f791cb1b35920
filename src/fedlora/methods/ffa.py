"""FFA-LoRA: freeze A at a shared random init, train and average B only.

Paper: Sun, Qin, Li and Ding, "Improving LoRA in Privacy-preserving Federated Learning",
ICLR 2024, arXiv 2403.12313 (Federated Freeze-A LoRA; equation numbers not checked). With A
identical and fixed on every client, ``s B̄ A = Σ p_k s B_k A`` — averaging B is exact and
halves the upload.

Departures and choices:

- ``A`` is never sent. Every party derives it from the run's public seed
  (``Setup.seed``) with the portable SplitMix64 generator (``ops.seeded_init``), so the
  server and every client, on any platform or torch version, get bit-identical ``A`` and
  the byte counts (B only, both ways) are honest. Distribution: PEFT's default A init,
  ``U(-1/√n, 1/√n)``; layer i uses the stream positions after those of layers 0..i-1.
- FLoRIST's first public code froze B instead of A for this baseline; here A is frozen
  (``trainable = {"B"}``) and B starts at zero, as in the paper.
- Mixed ranks zero-pad B, as FLoRIST's paper ran this baseline: the frozen A of a rank-``r_k``
  client is the first ``r_k`` rows of the shared rank-``R`` A (``R`` the largest rank), the
  server averages ``(s_k / s_g)·B_k`` zero-padded to ``R`` columns, and client k receives the
  first ``r_k`` columns times ``s_g / s_k``. Then ``s_g B̄ A = Σ p_k s_k B_k A_k`` exactly; a
  client only ever trains its own ``r_k`` slots.
- Round 1's broadcast ``B = 0`` is an empty sparse entry (a few bytes, not a dense zero).
- The paper also studies DP-SGD and a scaling-factor choice; DP is a separate wrapper here
  and ``s = alpha / r`` is the clients' own scaling.
- Uploads are summed in client-id order (result independent of arrival order).

The project's reference for this method's maths and invariants: docs/methods.md
("FFA-LoRA").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
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
from fedlora.methods.common import MethodBase, dense, empty_sparse, key, lora_schema
from fedlora.methods.registry import register
from fedlora.methods.stacked import client_b, global_scaling, ordered, weighted_sum
from fedlora.ops.seeded_init import portable_uniform


@dataclass(frozen=True)
class FfaConfig:
    """FFA-LoRA has no options of its own."""


def frozen_a(setup: Setup, rank: int) -> dict[str, Tensor]:
    """The shared frozen ``A`` of every layer, derived from ``setup.seed``: the first ``rank``
    rows of the largest client rank's ``A`` (so every rank sees the same directions)."""
    full = setup.max_rank
    if not 1 <= rank <= full:
        raise ValueError(f"rank must be in [1, {full}], got {rank}")
    out: dict[str, Tensor] = {}
    offset = 0
    for spec in setup.layers:
        bound = 1.0 / math.sqrt(spec.in_features)
        out[spec.name] = portable_uniform(
            setup.seed, (full, spec.in_features), -bound, bound, start=offset
        )[:rank]
        offset += full * spec.in_features
    return out


def pad_columns(b: Tensor, rank: int) -> Tensor:
    """``b`` (m×r) zero-padded to ``rank`` columns."""
    out = torch.zeros(b.shape[0], rank, dtype=b.dtype)
    out[:, : b.shape[1]] = b
    return out


def _b_state(round_: int, bs: Mapping[str, Tensor]) -> ServerState:
    return ServerState(
        round=round_, tensors={key(layer, "B"): b.detach().clone() for layer, b in bs.items()}
    )


@register("ffa", FfaConfig)
class Ffa(MethodBase[FfaConfig]):
    """FFA-LoRA (see module docstring)."""

    dp_refusal = None  # the server step is a weighted sum of the uploads
    secure_refusal = None  # the same mean, of the masked changes

    name = "ffa"

    def init_server(self) -> ServerState:
        return _b_state(
            0, {s.name: torch.zeros(s.out_features, self.setup.max_rank) for s in self.setup.layers}
        )

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return {
                key(s.name, "B"): empty_sparse((s.out_features, client.rank))
                for s in self.setup.layers
            }
        ratio = global_scaling(self.setup) / client.scaling
        return {
            key(s.name, "B"): state.tensors[key(s.name, "B")][:, : client.rank] * ratio
            for s in self.setup.layers
        }

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        a = frozen_a(self.setup, client.rank)
        adapter = {
            s.name: LoraPair(a[s.name], dense(payload[key(s.name, "B")]).clone())
            for s in self.setup.layers
        }
        return ClientStart(adapter=adapter, trainable=frozenset({"B"}))

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return {key(layer, "B"): pair.B.detach().clone() for layer, pair in trained.items()}

    def upload_schema(self, client: ClientSpec) -> Schema:
        return lora_schema(self.setup, client.rank, "B")

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ups = ordered(uploads)
        weights = aggregation_weights(ups, self.setup.weighting)
        s_g = global_scaling(self.setup)
        coeffs = [
            p * self.setup.client(u.cid).scaling / s_g for p, u in zip(weights, ups, strict=True)
        ]
        bs = {
            s.name: weighted_sum(
                [pad_columns(client_b(u, self.setup, s.name), self.setup.max_rank) for u in ups],
                coeffs,
            )
            for s in self.setup.layers
        }
        return _b_state(state.round + 1, bs)

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        s_g = global_scaling(self.setup)
        a = frozen_a(self.setup, self.setup.max_rank)
        return {
            s.name: (s_g * state.tensors[key(s.name, "B")], a[s.name]) for s in self.setup.layers
        }
