"""Local-only training: every client trains its own adapter alone; nothing is shared.

Not a federated method but federated learning's lower bound, which a user asks about first:
does federating beat each client training on its own data? Every client starts from the same
fresh adapter (PEFT's init from the run's seed, ``B = 0``), keeps what it trains as its own
part (``Method.own_part``: both factors) and continues from it every round it is sampled;
nothing is uploaded (an empty payload of a few bytes) and nothing is broadcast. Client k's
model is ``W0 + s_k·B_k·A_k``; there is no global model (the global update is zero, so the
server's own sets score the base model). Each client's own model is scored and written on its
side as for every method that keeps own parts (:mod:`fedlora.runtime.own_parts`), and, in
process, on the server's public sets too (``set@client<k>`` in ``metrics.jsonl``). Clients may
have any ranks. Differential privacy does not apply: nothing leaves a client.

The project's reference for this method: docs/methods.md ("Local-only training").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
)
from fedlora.methods.common import MethodBase, fresh_lora, key, no_update
from fedlora.methods.registry import register


@dataclass(frozen=True)
class LocalConfig:
    """Local-only training has no options."""


@register("local", LocalConfig)
class Local(MethodBase[LocalConfig]):
    """Local-only training (see module docstring)."""

    name = "local"
    keeps_own_parts = True
    dp_refusal = "nothing leaves a client, so there is nothing to add noise to"
    secure_refusal = "nothing leaves a client, so there is nothing to sum"

    def init_server(self) -> ServerState:
        return ServerState(round=0)

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        return no_update(self.setup)

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        return {}

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        return ClientStart(adapter=fresh_lora(self.setup, client.rank, self.setup.seed))

    def personalise(
        self,
        start: ClientStart,
        own: Mapping[str, Tensor] | None,
        client: ClientSpec,
    ) -> ClientStart:
        if not own:
            return start
        adapter = {
            layer: LoraPair(own[key(layer, "A")].clone(), own[key(layer, "B")].clone())
            for layer in start.adapter
        }
        return dataclasses.replace(start, adapter=adapter)

    def own_part(self, start: ClientStart, trained: Lora, client: ClientSpec) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for layer, pair in trained.items():
            out[key(layer, "A")] = pair.A.detach().clone()
            out[key(layer, "B")] = pair.B.detach().clone()
        return out

    def own_update(
        self,
        update: Mapping[str, Factored],
        own: Mapping[str, Tensor] | None,
        client: ClientSpec,
    ) -> dict[str, Factored]:
        """``(s_k·B_k, A_k)`` per layer: the client's own adapter (the base before it trained)."""
        if not own:
            return dict(update)
        return {
            s.name: (client.scaling * own[key(s.name, "B")], own[key(s.name, "A")])
            for s in self.setup.layers
        }

    def upload_schema(self, client: ClientSpec) -> Schema:
        return {}

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return {}

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        return ServerState(round=state.round + 1)
