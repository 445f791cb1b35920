"""FedEx-LoRA: FedAvg of the factors plus the exact residual merged into the base weights.

Paper: Singhal, Ponkshe and Vepakomma, "FedEx-LoRA: Exact Aggregation for Federated and
Efficient Fine-Tuning of Foundation Models", ACL 2025, arXiv 2410.09432 (equation numbers
not checked). The server averages ``Ā = Σ p_k A_k``, ``B̄ = Σ p_k B_k`` and computes the
residual ``Res = Σ p_k s B_k A_k − s B̄ Ā``; clients add ``Res`` to their frozen weights and
continue from ``(Ā, B̄)``, so the global model ``W0 + s B̄ Ā + Res`` is the exact average.

Departures and choices:

- The residual is computed, sent and merged factored, never as an m×n matrix. Because
  ``Σ p_k = 1``, ``Res = s Σ p_k (B_k − B̄)(A_k − Ā)`` (same value, no cancellation between
  two large products), i.e. the stack ``L = [B_1 − B̄ … B_K − B̄]``,
  ``R = [p_1 s (A_1 − Ā); …; p_K s (A_K − Ā)]`` of rank ≤ K·r. With ``compress = True``
  (default) it is re-factored at its numerical rank by a factored SVD, which is at most
  ``(K − 1)·r`` because ``Σ p_k (B_k − B̄) = 0``; the paper sends the dense residual.
- The authors' code adds a *transposed* residual for ``nn.Linear`` layers; not reproduced:
  ``Res`` has the layer's m×n orientation.
- Client ranks and alphas must all be equal (``validate`` refuses anything else): the
  method averages factors entry-wise, which has no meaning across ranks.
- The residual of round t is sent in round t+1's broadcast; ``global_delta`` is
  ``s B̄ Ā + Res`` with that pending residual, as one stacked pair.
- Uploads are summed in client-id order (result independent of arrival order).

The project's reference for this method's maths and invariants: docs/methods.md
("FedEx-LoRA").
"""

from __future__ import annotations

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
from fedlora.methods.common import (
    MethodBase,
    dense,
    fresh_lora,
    initial_payload,
    key,
    lora_payload,
    no_update,
)
from fedlora.methods.registry import register
from fedlora.methods.stacked import client_pair, ordered, weighted_sum
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse
from fedlora.ops.stack import compress_layers, stack_products
from fedlora.validate import flag

RES_L, RES_R = "res_L", "res_R"


@dataclass(frozen=True)
class FedExConfig:
    """``compress``: re-factor the residual at its numerical rank before sending it."""

    compress: bool = True

    def __post_init__(self) -> None:
        flag("compress", self.compress)


def residual(
    pairs: Sequence[LoraPair], weights: Sequence[float], mean: LoraPair, scaling: float
) -> Factored:
    """``s Σ p_k (B_k − B̄)(A_k − Ā)`` as a stacked pair.

    Equals ``Σ p_k s B_k A_k − s B̄Ā`` when the weights sum to one and ``mean`` is their
    weighted mean; the rank is at most ``Σ r_k``.
    """
    return stack_products(
        [p.B - mean.B for p in pairs],
        [p.A - mean.A for p in pairs],
        [w * scaling for w in weights],
    )


def _state(round_: int, mean: Mapping[str, LoraPair], res: Mapping[str, Factored]) -> ServerState:
    tensors: dict[str, Tensor] = {}
    for layer, pair in mean.items():
        tensors[key(layer, "A")] = pair.A.detach().clone()
        tensors[key(layer, "B")] = pair.B.detach().clone()
        tensors[key(layer, RES_L)] = res[layer][0].detach().clone()
        tensors[key(layer, RES_R)] = res[layer][1].detach().clone()
    ranks = {layer: int(left.shape[1]) for layer, (left, _) in res.items()}
    return ServerState(round=round_, tensors=tensors, meta={"residual_ranks": ranks})


def _residuals(
    tensors: Mapping[str, Tensor | Sparse | SeededInit], setup: Setup
) -> dict[str, Factored]:
    return {
        s.name: (dense(tensors[key(s.name, RES_L)]), dense(tensors[key(s.name, RES_R)]))
        for s in setup.layers
    }


@register("fedex", FedExConfig)
class FedEx(MethodBase[FedExConfig]):
    """FedEx-LoRA (see module docstring)."""

    name = "fedex"

    dp_refusal = "its residual is built from each client's own product B_k A_k"

    @property
    def shares_individual_updates(self) -> bool:  # type: ignore[override]
        """Uncompressed, the residual's factors are the clients' own scaled factors."""
        return not self.config.compress

    def validate(self) -> None:
        if not self.setup.homogeneous:
            shapes = sorted({(c.rank, c.alpha) for c in self.setup.clients})
            raise ConfigError(
                "fedex (FedEx-LoRA) needs every client to use the same LoRA rank and alpha "
                f"(it averages A and B entry-wise); got (rank, alpha) pairs {shapes}"
            )

    def init_server(self) -> ServerState:
        return _state(
            0, fresh_lora(self.setup, self.setup.max_rank, self.setup.seed), no_update(self.setup)
        )

    def skip_round(self, state: ServerState) -> ServerState:
        # The residual went out with the skipped round's broadcast and was merged; the
        # averaged adapter stays the clients' start.
        mean = {
            s.name: LoraPair(state.tensors[key(s.name, "A")], state.tensors[key(s.name, "B")])
            for s in self.setup.layers
        }
        return _state(state.round, mean, no_update(self.setup))

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        out: Payload = {name: t.clone() for name, t in state.tensors.items()}
        if state.round == 0:
            # The fresh init travels as seeds and the init rule; the residuals are empty.
            out.update(initial_payload(self.setup, self.setup.max_rank, self.setup.seed))
        return out

    def base_merge(self, payload: Payload) -> dict[str, Factored]:
        return {
            layer: (left.clone(), right.clone())
            for layer, (left, right) in _residuals(payload, self.setup).items()
            if left.shape[1] > 0
        }

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        adapter = {
            s.name: LoraPair(
                dense(payload[key(s.name, "A")]).clone(), dense(payload[key(s.name, "B")]).clone()
            )
            for s in self.setup.layers
        }
        return ClientStart(adapter=adapter)

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        return lora_payload(trained)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ups = ordered(uploads)
        weights = aggregation_weights(ups, self.setup.weighting)
        scaling = self.setup.clients[0].scaling
        mean: dict[str, LoraPair] = {}
        res: dict[str, Factored] = {}
        for spec in self.setup.layers:
            pairs = [client_pair(u, self.setup, spec.name) for u in ups]
            # The mean is taken in the uploads' dtype: the residual identity needs the
            # exact same Ā, B̄ that the clients continue from.
            mean[spec.name] = LoraPair(
                weighted_sum([p.A for p in pairs], weights),
                weighted_sum([p.B for p in pairs], weights),
            )
            res[spec.name] = residual(pairs, weights, mean[spec.name], scaling)
        if self.config.compress:
            res = dict(compress_layers(res))
        return _state(state.round + 1, mean, res)

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        scaling = self.setup.clients[0].scaling
        out: dict[str, Factored] = {}
        for layer, (res_l, res_r) in _residuals(state.tensors, self.setup).items():
            a = state.tensors[key(layer, "A")]
            b = state.tensors[key(layer, "B")]
            out[layer] = (torch.cat([scaling * b, res_l], dim=1), torch.cat([a, res_r], dim=0))
        return out
