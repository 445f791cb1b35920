"""FlexLoRA: aggregate the full update, give each client its own rank's truncated SVD.

Paper: Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks
and Client Resources", NeurIPS 2024, arXiv 2402.11505 (equation numbers not checked). The
server forms ``ΔW = Σ p_k s_k B_k A_k``, takes its SVD ``U S Vᵀ``, and client ``i`` (rank
``r_i``, scaling ``s_i``) receives ``B_i = U_{r_i} S_{r_i} / s_i``, ``A_i = V_{r_i}ᵀ``; it
continues training from that pair.

Departures and choices:

- The paper forms the dense m×n ``ΔW``; here ``ΔW`` is the FLoRIST stack ``B_st A_st`` and
  its SVD is computed from the factors (``ops.factored``): same numbers, O((m+n)·Σr_k) memory;
  on a GPU the layers of one shape are factorised in one batched call (``ops.batches``).
- The server state keeps the whole aggregate at its numerical rank (singular values above
  ``S_1·1e-7``) as ``layer.B = U S`` (scaling folded in) and ``layer.A = Vᵀ``; the global
  model (``global_delta``) is that full aggregate, and each client's broadcast is its
  truncation. ``state.meta["ranks"]`` records the numerical rank per layer.
- A client receives only ``min(rank(ΔW), r_i)`` directions and pads the rest (only when
  ``ΔW`` has lower rank than the client's adapter) by the rule ``pad``: ``fresh`` (default)
  gives those slots a seeded PEFT init of ``A`` and ``B = 0``, ``zeros`` leaves them dead.
- Before round 1 the state is the usual LoRA init of the largest rank (A random from the
  setup seed, B = 0), truncated per client like any other state; that first broadcast is
  sent as seeds and the init rule (``common.initial_payload``).
- Uploads are stacked in client-id order (result independent of arrival order).

The project's reference for this method's maths and invariants: docs/methods.md
("FlexLoRA").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
)
from fedlora.methods.common import (
    MethodBase,
    PadConfig,
    apply_pad,
    fresh_lora,
    initial_payload,
    key,
    lora_at_rank,
    lora_payload,
)
from fedlora.methods.registry import register
from fedlora.methods.stacked import global_scaling, stacked_update
from fedlora.ops.stack import compress_layers


@dataclass(frozen=True)
class FlexLoraConfig(PadConfig):
    """``pad``: "fresh" or "zeros", how a client fills slots beyond the aggregate's rank."""


def _state(round_: int, factored: Mapping[str, Factored]) -> ServerState:
    """State from per-layer ``(U S, Vᵀ)`` (scaling folded into the left factor)."""
    tensors: dict[str, Tensor] = {}
    for layer, (left, right) in factored.items():
        tensors[key(layer, "B")] = left.detach().clone()
        tensors[key(layer, "A")] = right.detach().clone()
    ranks = {layer: int(right.shape[0]) for layer, (_, right) in factored.items()}
    return ServerState(round=round_, tensors=tensors, meta={"ranks": ranks})


def _factored(state: ServerState, setup: Setup) -> dict[str, Factored]:
    return {
        s.name: (state.tensors[key(s.name, "B")], state.tensors[key(s.name, "A")])
        for s in setup.layers
    }


@register("flexlora", FlexLoraConfig)
class FlexLora(MethodBase[FlexLoraConfig]):
    """FlexLoRA (see module docstring)."""

    dp_refusal = "it takes an SVD of the stack of each client's own factors, not of a sum"

    name = "flexlora"

    def init_server(self) -> ServerState:
        s_g = global_scaling(self.setup)
        init = fresh_lora(self.setup, self.setup.max_rank, self.setup.seed)
        return _state(0, {layer: (s_g * p.B, p.A) for layer, p in init.items()})

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return initial_payload(self.setup, client.rank, self.setup.seed)
        out: dict[str, LoraPair] = {}
        for layer, (left, right) in _factored(state, self.setup).items():
            k = min(right.shape[0], client.rank)
            out[layer] = LoraPair(right[:k], left[:, :k] / client.scaling)
        return lora_payload(out)

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        adapter = lora_at_rank(payload, self.setup, client.rank)
        return ClientStart(adapter=apply_pad(adapter, self.setup, self.config.pad))

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return lora_payload(trained)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        stacks = stacked_update(uploads, self.setup)
        return _state(state.round + 1, dict(compress_layers(stacks)))

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        return {n: (lf.clone(), rf.clone()) for n, (lf, rf) in _factored(state, self.setup).items()}
