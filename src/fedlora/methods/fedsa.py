"""FedSA-LoRA: clients share A and keep B; each client ends with a model of its own.

Paper: P. Guo, S. Zeng, Y. Wang, H. Fan, F. Wang, L. Qu, "Selective Aggregation for
Low-Rank Adaptation in Federated Learning", ICLR 2025, arXiv 2410.01463. Clients train both
factors; the server averages only ``A``, ``Ā = Σ p_k A_k``, and broadcasts it; each client's
``B_k`` stays on the client and continues from its own value next round. The paper's argument:
``A`` learns what is general across clients, ``B`` what is specific to each. Client k's model
is ``W0 + s·B_k·Ā`` (after the round's aggregation); there is no single global model.

Invariants (tests/methods/test_fedsa.py, float64 references): the server's ``Ā`` is the
weighted mean of the uploaded ``A_k``; uploads carry ``A`` only; a client trains from ``Ā``
and its own last ``B_k`` (zero before its first round); its own model is ``s·B_k·Ā``.

How fedlora carries it: the personal ``B`` is a client's own part (``Method.own_part``), kept
on its side by the runtime (in-process under the run folder's ``clients/``, on Flower in the
SuperNode's ``state-dir``; :mod:`fedlora.runtime.own_parts`) and never sent. The global
update (what the server evaluates on its own sets and writes as the shared adapter) is the
shared part alone: ``Ā`` with ``B = 0``, i.e. the base model; each client's own model is
scored on its own held-out data and written as a PEFT folder on its side.

Departures and choices:

- Round 1's broadcast is ``A``'s seed and init rule (PEFT's init); later broadcasts send
  ``Ā`` densely. A client that never trained starts its ``B`` at zero.
- Aggregation weights follow ``setup.weighting``; uploads are summed in client-id order.
- One rank and alpha for all clients (mixed ranks are refused: the paper has none). Central
  DP composes (the server step is a weighted mean of the uploaded ``A``; ``B`` never leaves).

The project's reference for this method's maths and invariants: docs/methods.md
("FedSA-LoRA").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.methods import synced
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    Lora,
    LoraPair,
    Payload,
    Schema,
    ServerState,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import dense, initial_payload, key, lora_schema
from fedlora.methods.registry import register
from fedlora.methods.stacked import ordered, weighted_sum


@dataclass(frozen=True)
class FedSaConfig:
    """FedSA-LoRA has no options of its own."""


def _a_state(round_: int, a: Mapping[str, Tensor]) -> ServerState:
    return ServerState(round=round_, tensors={key(layer, "A"): t for layer, t in a.items()})


@register("fedsa", FedSaConfig)
class FedSa(synced.SharedAdapter[FedSaConfig]):
    """FedSA-LoRA (see module docstring)."""

    name = "fedsa"
    keeps_own_parts = True
    dp_refusal = None  # a weighted mean of the uploaded A; B never leaves the client
    secure_refusal = None  # the same mean, of the masked changes

    def init_server(self) -> ServerState:
        fresh = synced.initial_state(self.setup)
        return _a_state(0, {s.name: fresh.tensors[key(s.name, "A")] for s in self.setup.layers})

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        """The shared part alone: ``Ā`` with ``B = 0`` (the base model's update is zero)."""
        return {
            s.name: (
                torch.zeros(s.out_features, self.setup.max_rank),
                state.tensors[key(s.name, "A")],
            )
            for s in self.setup.layers
        }

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            full = initial_payload(self.setup, client.rank, self.setup.seed)
            return {key(s.name, "A"): full[key(s.name, "A")] for s in self.setup.layers}
        return {name: a.clone() for name, a in state.tensors.items()}

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        adapter = {
            s.name: LoraPair(
                dense(payload[key(s.name, "A")]).clone(), torch.zeros(s.out_features, client.rank)
            )
            for s in self.setup.layers
        }
        return ClientStart(adapter=adapter)

    def personalise(
        self,
        start: ClientStart,
        own: Mapping[str, Tensor] | None,
        client: ClientSpec,
    ) -> ClientStart:
        if not own:
            return start
        adapter = {
            layer: LoraPair(pair.A, own[key(layer, "B")].clone())
            for layer, pair in start.adapter.items()
        }
        return dataclasses.replace(start, adapter=adapter)

    def own_part(self, start: ClientStart, trained: Lora, client: ClientSpec) -> dict[str, Tensor]:
        return {key(layer, "B"): pair.B.detach().clone() for layer, pair in trained.items()}

    def own_update(
        self,
        update: Mapping[str, Factored],
        own: Mapping[str, Tensor] | None,
        client: ClientSpec,
    ) -> dict[str, Factored]:
        """``(s·B_k, Ā)`` per layer: the client's own ``B`` on the shared ``A``."""
        if not own:
            return dict(update)
        return {
            layer: (client.scaling * own[key(layer, "B")], shared_a)
            for layer, (_, shared_a) in update.items()
        }

    def upload_schema(self, client: ClientSpec) -> Schema:
        return lora_schema(self.setup, client.rank, "A")

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return {key(layer, "A"): pair.A.detach().clone() for layer, pair in trained.items()}

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ups = ordered(uploads)
        weights = aggregation_weights(ups, self.setup.weighting)
        return _a_state(
            state.round + 1,
            {
                s.name: weighted_sum([dense(u.payload[key(s.name, "A")]) for u in ups], weights)
                for s in self.setup.layers
            },
        )
