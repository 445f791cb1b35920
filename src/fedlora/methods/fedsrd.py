"""FedSRD and FedSRD-e: Sparsify, Reconstruct, Decompose.

Paper: G. Yan, L. Xie, Q. Shen, Y. Fang, Z. Wu, "FedSRD: Sparsify-Reconstruct-Decompose for
Communication-Efficient Federated Large Language Models Fine-Tuning", arXiv 2510.04601,
WWW 2026. The three stages of its method section map to this module as follows (equation
numbers are not cited: they were not verified against the final version):

- Sparsify (client): importance ``I_B[u,v] = |ΔB[u,v]|·||A^{t-1}[v,:]||``,
  ``I_A[u,v] = |ΔA[u,v]|·||B_k[:,u]||`` (:mod:`fedlora.ops.importance`), per-matrix ratio
  ``rho = base + min(upper, coeff·ln(max(kurt, 1)))``, keep scores ``>=`` the
  rho-quantile (:func:`fedlora.ops.masks.quantile_mask`), upload the two sparse deltas.
- Reconstruct (server): ``B_k = B^{t-1} + ΔB_k``, ``A_k = A^{t-1} + ΔA_k``,
  ``W = Σ p_k B_k A_k`` kept as the stacked product ``[p_1 B_1 …]·[A_1; …]``.
- Decompose (server): FedSRD takes the rank-r truncated SVD ``W_r`` (factored kernel);
  FedSRD-e skips it (``W_r = W``). Then ``ΔW = W_r − B^{t-1}A^{t-1}`` and one closed-form
  least-squares step on one factor, alternating across rounds: B-rounds
  ``ΔB = ΔW·pinv(A^{t-1})``, A-rounds ``ΔA = pinv(B^{t-1})·ΔW``, both in factored order
  (:mod:`fedlora.ops.solve`), so no m×n matrix is formed. The delta is sparsified with DARE
  (drop ``p_down``, survivors × ``1/(1 − p_down)``) and this sparse delta is both added to the
  server's global adapter and broadcast; clients add the same delta (:mod:`.synced`).

Departures and choices:

- Round 1 is a B-round (the paper's odd rounds). The authors' code starts with an A-round,
  where ``pinv(B^0) = pinv(0) = 0`` makes round 1's update vanish; that is not copied.
- Rescaling the pruned client deltas by ``Σ|Δ| / Σ|Δ_pruned|`` comes from the authors' code,
  not the paper; it is on by default (``rescale = True``) and can be turned off.
- Quantile definition: the "lower" order statistic ``x_(floor(rho·(N−1)))``; ties at the
  threshold are kept (see :mod:`fedlora.ops.masks`). Kept elements whose delta is exactly 0
  are left out of the upload (they change nothing once added back).
- Kurtosis is Pearson's (population moments, normal = 3); constant scores (undefined
  kurtosis) give ``rho = base``.
- The downlink DARE positions come from a seed derived from the run seed, the round and the
  layer (:func:`downlink_seed`), so the wire can send the seed; clients check it.
- Aggregation weights follow ``setup.weighting`` (the paper uses uniform weights).
- Uploads are aggregated in client-id order, so the result does not depend on arrival order.
- First broadcast: the initial ``A^0`` (PEFT init from the server seed) dense and ``B^0 = 0``
  as an empty sparse tensor.
- Heterogeneous ranks (or alphas) are refused: the method keeps one shared global adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.errors import PayloadError
from fedlora.methods import synced
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
    aggregation_weights,
)
from fedlora.methods.common import DefaultHooks, fresh_lora, key
from fedlora.methods.registry import register
from fedlora.ops.factored import truncated_factors
from fedlora.ops.importance import adaptive_sparsity, importance_a, importance_b
from fedlora.ops.masks import dare, derive_seed, quantile_mask, rescale_pruned
from fedlora.ops.solve import solve_a_update, solve_b_update
from fedlora.ops.sparse import Sparse

log = logging.getLogger(__name__)


def _unit_interval(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= float(value) < float("inf"):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class FedSRDConfig:
    """Options of FedSRD / FedSRD-e.

    ``base``, ``coeff``, ``upper``: the adaptive upload sparsity
    ``rho = base + min(upper, coeff·ln(max(kurt, 1)))``; ``fixed_rho`` replaces it by a
    constant; ``rescale`` multiplies pruned deltas by ``Σ|Δ| / Σ|Δ_pruned|``; ``p_down`` is
    the downlink DARE drop probability.
    """

    base: float = 0.85
    coeff: float = 0.1
    upper: float = 0.11
    fixed_rho: float | None = None
    rescale: bool = True
    p_down: float = 0.8

    def __post_init__(self) -> None:
        _unit_interval("base", self.base)
        _non_negative("coeff", self.coeff)
        _non_negative("upper", self.upper)
        if self.base + self.upper >= 1.0:
            raise ValueError(
                f"base + upper must be < 1 (the largest sparsity), got {self.base + self.upper}"
            )
        if self.fixed_rho is not None:
            _unit_interval("fixed_rho", self.fixed_rho)
        if not isinstance(self.rescale, bool):
            raise ValueError(f"rescale must be true or false, got {self.rescale!r}")
        _unit_interval("p_down", self.p_down)


def active_factor(round_: int) -> str:
    """The factor the server updates in round ``round_`` (1-based): odd "B", even "A"."""
    if round_ < 1:
        raise ValueError(f"rounds count from 1, got {round_}")
    return "B" if round_ % 2 == 1 else "A"


def downlink_seed(run_seed: int, round_: int, layer: str) -> int:
    """Seed of the downlink DARE mask of ``layer`` in round ``round_`` (both sides derive it)."""
    return derive_seed(run_seed, "fedsrd-downlink", round_, layer)


def sparsify_delta(delta: Tensor, scores: Tensor, rho: float, rescale: bool) -> Sparse:
    """Keep ``delta`` where ``scores >=`` their rho-quantile, optionally rescaled.

    Exact zeros among the kept values are left out of the sparse result: adding them back
    changes nothing, and they would only cost bytes.
    """
    pruned = torch.where(quantile_mask(scores, rho), delta, torch.zeros_like(delta))
    if rescale:
        pruned = rescale_pruned(delta, pruned)
    return Sparse.from_mask(pruned, pruned != 0)


def stacked_aggregate(
    a_prev: Tensor, b_prev: Tensor, deltas: Sequence[tuple[float, Tensor, Tensor]]
) -> Factored:
    """``W = Σ p_k (B^{t-1}+ΔB_k)(A^{t-1}+ΔA_k)`` as ``([p_1 B_1 … p_K B_K], [A_1; …; A_K])``.

    ``deltas`` holds ``(p_k, ΔA_k, ΔB_k)``.
    """
    lefts = [p * (b_prev + d_b) for p, _, d_b in deltas]
    rights = [a_prev + d_a for _, d_a, _ in deltas]
    return torch.cat(lefts, dim=1), torch.cat(rights, dim=0)


def least_squares_step(target: Factored, a_prev: Tensor, b_prev: Tensor, factor: str) -> Tensor:
    """The closed-form update of ``factor`` toward ``target − B^{t-1}A^{t-1}`` (factored).

    Returns ``ΔB = ΔW·pinv(A^{t-1})`` (m×r) for ``factor == "B"``, else
    ``ΔA = pinv(B^{t-1})·ΔW`` (r×n), with ``ΔW = [W_l, −B^{t-1}]·[W_r; A^{t-1}]``.
    """
    w_left, w_right = target
    d_left = torch.cat([w_left, -b_prev], dim=1)
    d_right = torch.cat([w_right, a_prev], dim=0)
    if factor == "B":
        return solve_b_update(d_left, d_right, a_prev)
    return solve_a_update(d_left, d_right, b_prev)


class _FedSRDBase(DefaultHooks):
    """FedSRD's round; subclasses choose the decomposition of the aggregate (see module doc)."""

    name = "fedsrd"

    def __init__(self, config: FedSRDConfig) -> None:
        self.config = config

    def decompose(self, left: Tensor, right: Tensor, rank: int) -> Factored:
        """The target ``W_r`` for the aggregate ``W = left @ right``."""
        raise NotImplementedError

    # -- setup and state -------------------------------------------------------------------

    def validate(self, setup: Setup) -> None:
        synced.require_homogeneous(setup, self.name)

    def init_server(self, setup: Setup) -> ServerState:
        self.validate(setup)
        adapter = fresh_lora(setup, setup.max_rank, setup.seed)
        tensors: dict[str, Tensor] = {}
        for layer, pair in adapter.items():
            tensors[key(layer, "A")] = pair.A
            tensors[key(layer, "B")] = pair.B
        return ServerState(round=0, tensors=tensors, meta={"updated": None})

    def global_delta(self, state: ServerState, setup: Setup) -> dict[str, Factored]:
        return synced.global_scaled(state, setup)

    # -- downlink --------------------------------------------------------------------------

    def broadcast(self, state: ServerState, setup: Setup, client: ClientSpec) -> Payload:
        if state.round == 0:
            return synced.initial_payload(synced.global_lora(state, setup))
        part = "d" + active_factor(state.round)
        keep = 1.0 - self.config.p_down
        out: Payload = {}
        for s in setup.layers:
            applied = state.tensors[key(s.name, part)]
            # The stored delta is zero off the seeded mask, so re-extracting it on that mask
            # reproduces the sparse tensor the server applied, values included.
            out[key(s.name, part)] = Sparse.from_seeded_mask(
                applied, downlink_seed(setup.seed, state.round, s.name), keep
            )
        return out

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        setup: Setup,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        def check(layer: str, part: str, delta: Sparse | Tensor, round_: int) -> None:
            if part != active_factor(round_):
                raise PayloadError(f"round {round_} updates {active_factor(round_)}, got Δ{part}")
            expected = downlink_seed(setup.seed, round_, layer)
            if isinstance(delta, Sparse) and delta.mask_seed not in (None, expected):
                raise PayloadError(
                    f"{layer}: downlink mask seed does not match round {round_}; this client's "
                    "global adapter is out of sync"
                )

        new_view = synced.apply_broadcast(view, payload, setup, check)
        return ClientStart(adapter=synced.lora_from_view(new_view, setup), view=new_view)

    # -- uplink ----------------------------------------------------------------------------

    def upload_schema(self, setup: Setup, client: ClientSpec) -> dict[str, tuple[int, ...]]:
        return synced.delta_schema(setup, client.rank)

    def _ratio(self, scores: Tensor) -> float:
        cfg = self.config
        if cfg.fixed_rho is not None:
            return cfg.fixed_rho
        return adaptive_sparsity(scores, cfg.base, cfg.coeff, cfg.upper)

    def upload(
        self, start: ClientStart, trained: Lora, setup: Setup, client: ClientSpec, seed: int
    ) -> Payload:
        out: Payload = {}
        for s in setup.layers:
            a_old = start.view[key(s.name, "A")]
            b_old = start.view[key(s.name, "B")]
            a_new = trained[s.name].A.detach()
            b_new = trained[s.name].B.detach()
            d_a, d_b = a_new - a_old, b_new - b_old
            scores_b = importance_b(d_b, a_old)
            scores_a = importance_a(d_a, b_new)
            rho_b, rho_a = self._ratio(scores_b), self._ratio(scores_a)
            log.debug("client %d layer %s: rho_A %.4f rho_B %.4f", client.cid, s.name, rho_a, rho_b)
            out[key(s.name, "dA")] = sparsify_delta(d_a, scores_a, rho_a, self.config.rescale)
            out[key(s.name, "dB")] = sparsify_delta(d_b, scores_b, rho_b, self.config.rescale)
        return out

    # -- server ----------------------------------------------------------------------------

    def aggregate(self, state: ServerState, uploads: Sequence[Upload], setup: Setup) -> ServerState:
        ordered = sorted(uploads, key=lambda u: u.cid)
        weights = aggregation_weights(ordered, setup.weighting)
        round_ = state.round + 1
        factor = active_factor(round_)
        keep_rank = setup.max_rank
        tensors: dict[str, Tensor] = {}
        for s in setup.layers:
            a_prev = state.tensors[key(s.name, "A")]
            b_prev = state.tensors[key(s.name, "B")]
            deltas = [
                (
                    p,
                    synced.upload_delta(u.payload, s.name, "A", a_prev),
                    synced.upload_delta(u.payload, s.name, "B", b_prev),
                )
                for p, u in zip(weights, ordered, strict=True)
            ]
            target = self.decompose(*stacked_aggregate(a_prev, b_prev, deltas), keep_rank)
            update = least_squares_step(target, a_prev, b_prev, factor)
            sparse = dare(update, self.config.p_down, downlink_seed(setup.seed, round_, s.name))
            applied = sparse.to_dense()
            prev = {"A": a_prev, "B": b_prev}
            for part in ("A", "B"):
                delta = sparse if part == factor else None
                tensors[key(s.name, part)] = synced.add_delta(prev[part], delta)
            tensors[key(s.name, "d" + factor)] = applied
        return ServerState(round=round_, tensors=tensors, meta={"updated": factor})


@register("fedsrd", FedSRDConfig)
class FedSRD(_FedSRDBase):
    """FedSRD: the aggregate is truncated to rank r by a factored SVD before the solve."""

    name = "fedsrd"

    def decompose(self, left: Tensor, right: Tensor, rank: int) -> Factored:
        return truncated_factors(left, right, rank)


@register("fedsrd-e", FedSRDConfig)
class FedSRDE(_FedSRDBase):
    """FedSRD-e: no SVD; the least-squares step targets the full aggregate."""

    name = "fedsrd-e"

    def decompose(self, left: Tensor, right: Tensor, rank: int) -> Factored:
        return left, right
