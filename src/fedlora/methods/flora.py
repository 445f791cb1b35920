"""FLoRA: stack the client adapters exactly, merge the stack into the base every round.

Paper: Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024, arXiv 2409.05976 (stacking-based aggregation, Section 3;
equation numbers not checked). The server stacks ``B_st = [B_1 … B_K]`` and
``A_st = [p_1 s_1 A_1; …; p_K s_K A_K]`` (rank ``Σ r_k``), so ``B_st A_st = Σ p_k s_k B_k A_k``
with no aggregation error and any mix of client ranks. The stack is broadcast, every client
adds it to its frozen base weights and starts a fresh LoRA of its own rank.

Departures and choices:

- The scalings ``s_k`` and weights ``p_k`` are folded into the stacked A side; the state and
  broadcast hold the scaled factors under the names ``layer.L`` (= B_st) and ``layer.R``
  (= A_st), so nothing on the receiving side needs to know the clients' alphas.
- Uploads are stacked in client-id order (result independent of arrival order).
- Before round 1 there is nothing to merge: the state holds rank-0 factors (zero bytes of
  values on the wire).
- The FLoRA repository's FedIT baseline keeps only client 0 (``weighted_sindgle_weights``);
  irrelevant here, noted for completeness (see ``fedavg``).
- Fresh LoRA after a merge uses ``fresh_lora(setup, r_k, seed)`` with the runtime's seed
  (the paper re-initialises A randomly and B to zero, as PEFT does).

The project's reference for this method's maths and invariants: docs/methods.md
("FLoRA").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    Lora,
    Payload,
    ServerState,
    Setup,
    Tensor,
    Upload,
)
from fedlora.methods.common import MethodBase, dense, fresh_lora, key, lora_payload, no_update
from fedlora.methods.registry import register
from fedlora.methods.stacked import stacked_update
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse


@dataclass(frozen=True)
class FloraConfig:
    """FLoRA has no options of its own."""


def _stack_state(round_: int, stacks: Mapping[str, Factored]) -> ServerState:
    tensors: dict[str, Tensor] = {}
    for layer, (left, right) in stacks.items():
        tensors[key(layer, "L")] = left.detach().clone()
        tensors[key(layer, "R")] = right.detach().clone()
    return ServerState(
        round=round_,
        tensors=tensors,
        meta={"ranks": {layer: int(left.shape[1]) for layer, (left, _) in stacks.items()}},
    )


def _stacks(
    tensors: Mapping[str, Tensor | Sparse | SeededInit], setup: Setup
) -> dict[str, Factored]:
    return {
        s.name: (dense(tensors[key(s.name, "L")]), dense(tensors[key(s.name, "R")]))
        for s in setup.layers
    }


@register("flora", FloraConfig)
class Flora(MethodBase[FloraConfig]):
    """FLoRA (see module docstring)."""

    name = "flora"
    shares_individual_updates = True  # the broadcast is the stack of every client's factors
    dp_refusal = "its broadcast is the stack of every client's own factors"

    def init_server(self) -> ServerState:
        return _stack_state(0, no_update(self.setup))

    def skip_round(self, state: ServerState) -> ServerState:
        # The stack went out with the skipped round's broadcast and every client merged it.
        return _stack_state(state.round, no_update(self.setup))

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        return {name: t.clone() for name, t in state.tensors.items()}

    def base_merge(self, payload: Payload) -> dict[str, Factored]:
        return {
            layer: (left.clone(), right.clone())
            for layer, (left, right) in _stacks(payload, self.setup).items()
            if left.shape[1] > 0
        }

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        return ClientStart(adapter=fresh_lora(self.setup, client.rank, seed))

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return lora_payload(trained)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        return _stack_state(state.round + 1, stacked_update(uploads, self.setup))

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        # The stack aggregated last is not merged yet: the next broadcast merges it.
        return {
            layer: (left.clone(), right.clone())
            for layer, (left, right) in _stacks(state.tensors, self.setup).items()
        }
