"""FLoRIST: stack the client adapters, keep the top singular directions by energy.

Paper: "FLoRIST: Singular Value Thresholding for Efficient and Accurate Federated
Fine-Tuning of Large Language Models", arXiv 2506.09199 (MLSys 2026). Equation numbers are
not cited here because the arXiv and camera-ready numbering was not checked; the steps
follow docs/methods.md ("FLoRIST"):

1. Stack: ``B_st = [B_1 … B_K]``, ``A_st = [p_1 s_1 A_1; …; p_K s_K A_K]``, so
   ``B_st A_st = Σ p_k s_k B_k A_k = ΔW_agg`` exactly.
2. SVD of ``B_st A_st`` from its factors (``ops.factored``); ΔW_agg is never formed. On a
   GPU the layers of one shape are factorised in one batched call (``ops.batches``).
3. Energy threshold: per layer, the smallest ``k*`` with ``Σ_{i<=k*} S_i² / Σ S_i² >= tau``
   (``tau = 1``: the numerical rank, so the aggregate is reproduced exactly).
4. Global adapter ``B_g = U_{k*} diag(S_{k*}) / s_g``, ``A_g = V_{k*}ᵀ``.

Modes between rounds: ``warm`` (default, the camera-ready code) — clients continue from the
global adapter on the unchanged base; ``merge`` (the first public version) — clients merge
``s_g B_g A_g`` into their base weights and train a fresh LoRA.

Departures and choices:

- The camera-ready code stacks client 0 twice (a ``for … else`` indentation slip); not
  reproduced: every client is stacked once.
- Uploads are stacked in client-id order, so results do not depend on arrival order.
- Warm mode: the server sends client k only the top ``min(k*, r_k)`` directions (what it
  will use) and the client pads to ``r_k``; the paper broadcasts the full rank-``k*`` pair.
  Same numbers, fewer honest bytes. Padding rule ``pad``: ``fresh`` (default) gives the
  padded slots a seeded PEFT init of ``A`` with ``B = 0`` (product unchanged, the slots can
  train); ``zeros`` (the released code) leaves ``A = B = 0``, a stationary point of the LoRA
  loss, so those slots never train and per-layer ranks can only fall round after round.
- Round 1's broadcast is the fresh PEFT init, sent as seeds and the init rule
  (``common.initial_payload``), not as dense ``A``.
- When a client's scaling ``s_k`` differs from ``s_g``, its copy of ``B_g`` is multiplied by
  ``s_g / s_k`` so that its adapter still adds ``s_g B_g A_g`` (no-op for ``alpha = 2r``).
- A layer whose aggregate is exactly zero gets rank ``k* = 0`` (empty factors).
- Merge mode: before round 1 there is nothing to merge; the state holds rank-0 factors.

The project's reference for this method's maths and invariants: docs/methods.md
("FLoRIST").
"""

from __future__ import annotations

import logging
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
    ServerState,
    Setup,
    Tensor,
    Upload,
)
from fedlora.methods.common import (
    MethodBase,
    PadConfig,
    apply_pad,
    dense,
    fresh_lora,
    initial_payload,
    key,
    lora_at_rank,
    lora_payload,
)
from fedlora.methods.registry import register
from fedlora.methods.stacked import global_scaling, stacked_update
from fedlora.ops.batches import map_layers
from fedlora.ops.factored import energy_rank, factored_svd
from fedlora.validate import number, one_of

log = logging.getLogger(__name__)

MODES = ("warm", "merge")


@dataclass(frozen=True)
class FloristConfig(PadConfig):
    """``tau``: energy threshold in (0, 1]; ``mode``: "warm" or "merge" between rounds;
    ``pad``: "fresh" or "zeros", how warm-mode clients fill slots beyond ``k*``."""

    tau: float = 0.9
    mode: str = "warm"

    def __post_init__(self) -> None:
        number("tau", self.tau, above=0.0, at_most=1.0)
        one_of("mode", self.mode, MODES)
        super().__post_init__()


def threshold_svd(
    left: Tensor, right: Tensor, tau: float, scaling: float
) -> tuple[Tensor, Tensor, int]:
    """FLoRIST steps 2–4 for one layer: ``(A_g, B_g, k*)`` with
    ``scaling · B_g @ A_g`` = the energy-``tau`` truncation of ``left @ right``."""
    return thresholded(*factored_svd(left, right), tau, scaling)


def thresholded(
    u: Tensor, s: Tensor, v: Tensor, tau: float, scaling: float
) -> tuple[Tensor, Tensor, int]:
    """Steps 3–4 on one layer's thin SVD ``U diag(S) Vᵀ``: ``(A_g, B_g, k*)``."""
    k = energy_rank(s, tau)
    b_g = u[:, :k] * (s[:k] / scaling)
    a_g = v[:, :k].T.contiguous()
    return a_g, b_g, k


def _state(round_: int, adapter: Mapping[str, LoraPair], ranks: Mapping[str, int]) -> ServerState:
    tensors = {name: dense(t) for name, t in lora_payload(adapter).items()}
    return ServerState(round=round_, tensors=tensors, meta={"ranks": dict(ranks)})


def _rank_zero(setup: Setup) -> dict[str, LoraPair]:
    return {
        s.name: LoraPair(torch.zeros(0, s.in_features), torch.zeros(s.out_features, 0))
        for s in setup.layers
    }


def _adapter(state: ServerState, setup: Setup) -> dict[str, LoraPair]:
    return {
        s.name: LoraPair(state.tensors[key(s.name, "A")], state.tensors[key(s.name, "B")])
        for s in setup.layers
    }


@register("florist", FloristConfig)
class Florist(MethodBase[FloristConfig]):
    """FLoRIST (see module docstring)."""

    dp_refusal = "it takes an SVD of the stack of each client's own factors, not of a sum"

    name = "florist"

    def init_server(self) -> ServerState:
        if self.config.mode == "warm":
            # Round 1 starts from the usual LoRA init (A random, B = 0), shared by all.
            start = fresh_lora(self.setup, self.setup.max_rank, self.setup.seed)
        else:
            start = _rank_zero(self.setup)
        return _state(0, start, {})

    def skip_round(self, state: ServerState) -> ServerState:
        if self.config.mode != "merge":
            return state
        # Merge mode: the global adapter went out with the skipped round's broadcast and
        # every client merged it into its base weights.
        return _state(state.round, _rank_zero(self.setup), state.meta.get("ranks", {}))

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        adapter = _adapter(state, self.setup)
        if self.config.mode == "merge":
            return lora_payload(adapter)
        if state.round == 0:
            return initial_payload(self.setup, client.rank, self.setup.seed)
        ratio = global_scaling(self.setup) / client.scaling
        out: dict[str, LoraPair] = {}
        for layer, pair in adapter.items():
            k = min(pair.A.shape[0], client.rank)
            out[layer] = LoraPair(pair.A[:k], pair.B[:, :k] * ratio)
        return lora_payload(out)

    def base_merge(self, payload: Payload) -> dict[str, Factored]:
        if self.config.mode != "merge":
            return {}
        s_g = global_scaling(self.setup)
        out: dict[str, Factored] = {}
        for spec in self.setup.layers:
            a = dense(payload[key(spec.name, "A")])
            if a.shape[0] > 0:
                out[spec.name] = (s_g * dense(payload[key(spec.name, "B")]), a.clone())
        return out

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        if self.config.mode == "merge":
            return ClientStart(adapter=fresh_lora(self.setup, client.rank, seed))
        adapter = lora_at_rank(payload, self.setup, client.rank)
        return ClientStart(adapter=apply_pad(adapter, self.setup, self.config.pad))

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return lora_payload(trained)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        s_g = global_scaling(self.setup)
        adapter: dict[str, LoraPair] = {}
        ranks: dict[str, int] = {}
        stacks = stacked_update(uploads, self.setup)
        for layer, (u, s, v) in map_layers(factored_svd, stacks):
            a_g, b_g, k = thresholded(u, s, v, self.config.tau, s_g)
            adapter[layer] = LoraPair(a_g, b_g)
            ranks[layer] = k
        log.info("FLoRIST round %d: per-layer ranks %s", state.round + 1, ranks)
        return _state(state.round + 1, adapter, ranks)

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        s_g = global_scaling(self.setup)
        return {n: (s_g * p.B, p.A.clone()) for n, p in _adapter(state, self.setup).items()}
