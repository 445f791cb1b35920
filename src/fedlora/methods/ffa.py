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
- Client ranks and alphas must all be equal (``validate`` refuses anything else): a shared
  frozen A has one shape.
- The paper also studies DP-SGD and a scaling-factor choice; DP is a separate wrapper here
  and ``s = alpha / r`` is the clients' own scaling.
- Uploads are summed in client-id order (result independent of arrival order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.errors import ConfigError
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
from fedlora.methods.common import DefaultHooks, dense, key, lora_schema
from fedlora.methods.registry import register
from fedlora.methods.stacked import client_b, ordered, weighted_sum
from fedlora.ops.seeded_init import portable_uniform


@dataclass(frozen=True)
class FfaConfig:
    """FFA-LoRA has no options of its own."""


def frozen_a(setup: Setup, rank: int) -> dict[str, Tensor]:
    """The shared frozen ``A`` of every layer (rank × n), derived from ``setup.seed``."""
    out: dict[str, Tensor] = {}
    offset = 0
    for spec in setup.layers:
        bound = 1.0 / math.sqrt(spec.in_features)
        out[spec.name] = portable_uniform(
            setup.seed, (rank, spec.in_features), -bound, bound, start=offset
        )
        offset += rank * spec.in_features
    return out


def _b_state(round_: int, bs: Mapping[str, Tensor]) -> ServerState:
    return ServerState(
        round=round_, tensors={key(layer, "B"): b.detach().clone() for layer, b in bs.items()}
    )


@register("ffa", FfaConfig)
class Ffa(DefaultHooks):
    """FFA-LoRA (see module docstring)."""

    name = "ffa"

    def __init__(self, config: FfaConfig) -> None:
        self.config = config

    def validate(self, setup: Setup) -> None:
        if not setup.homogeneous:
            shapes = sorted({(c.rank, c.alpha) for c in setup.clients})
            raise ConfigError(
                "ffa (FFA-LoRA) needs every client to use the same LoRA rank and alpha "
                f"(all share one frozen A); got (rank, alpha) pairs {shapes}"
            )

    def init_server(self, setup: Setup) -> ServerState:
        self.validate(setup)
        return _b_state(
            0, {s.name: torch.zeros(s.out_features, setup.max_rank) for s in setup.layers}
        )

    def broadcast(self, state: ServerState, setup: Setup, client: ClientSpec) -> Payload:
        return {name: t.clone() for name, t in state.tensors.items()}

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        setup: Setup,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        a = frozen_a(setup, client.rank)
        adapter = {
            s.name: LoraPair(a[s.name], dense(payload[key(s.name, "B")]).clone())
            for s in setup.layers
        }
        return ClientStart(adapter=adapter, trainable=frozenset({"B"}))

    def upload(
        self, start: ClientStart, trained: Lora, setup: Setup, client: ClientSpec, seed: int
    ) -> Payload:
        return {key(layer, "B"): pair.B.detach().clone() for layer, pair in trained.items()}

    def upload_schema(self, setup: Setup, client: ClientSpec) -> dict[str, tuple[int, ...]]:
        return lora_schema(setup, client.rank, "B")

    def aggregate(self, state: ServerState, uploads: Sequence[Upload], setup: Setup) -> ServerState:
        self.validate(setup)
        ups = ordered(uploads)
        weights = aggregation_weights(ups, setup.weighting)
        bs = {
            s.name: weighted_sum([client_b(u, setup, s.name) for u in ups], weights)
            for s in setup.layers
        }
        return _b_state(state.round + 1, bs)

    def global_delta(self, state: ServerState, setup: Setup) -> dict[str, Factored]:
        scaling = setup.clients[0].scaling
        a = frozen_a(setup, setup.max_rank)
        return {
            s.name: (scaling * state.tensors[key(s.name, "B")], a[s.name]) for s in setup.layers
        }
