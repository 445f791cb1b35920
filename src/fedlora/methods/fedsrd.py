"""FedSRD and FedSRD-e: Sparsify, Reconstruct, Decompose.

Paper: G. Yan, L. Xie, Q. Shen, Y. Fang, Z. Wu, "FedSRD: Sparsify-Reconstruct-Decompose for
Communication-Efficient Federated Large Language Models Fine-Tuning", arXiv 2510.04601,
WWW 2026. The three stages of its method section map to this module as follows (equation
numbers are not cited: they were not verified against the final version):

- Sparsify (client): importance ``I_B[u,v] = |ΔB[u,v]|·||A^{t-1}[v,:]||``,
  ``I_A[u,v] = |ΔA[u,v]|·||B_k[:,u]||`` (:mod:`fedlora.ops.importance`), per-matrix ratio
  ``rho = base + min(upper, coeff·ln(max(kurt, 1)))``, keep scores strictly above the
  linearly interpolated rho-quantile (:func:`fedlora.ops.masks.quantile_mask`), upload the
  two sparse deltas (:mod:`fedlora.ops.sparsify`).
- Reconstruct (server): ``B_k = B^{t-1} + ΔB_k``, ``A_k = A^{t-1} + ΔA_k``,
  ``W = Σ p_k B_k A_k`` kept as the stacked product ``[B_1 …]·diag(p)·[A_1; …]``.
- Decompose (server): FedSRD takes the rank-r truncated SVD ``W_r`` (factored kernel);
  FedSRD-e skips it (``W_r = W``) and so needs no stack at all: its step is a sum of
  per-client r×r products (:func:`fedlora.ops.solve.solve_b_clients`). Then
  ``ΔW = W_r − B^{t-1}A^{t-1}`` and one closed-form least-squares step on one factor, alternating across rounds: B-rounds
  ``ΔB = ΔW·pinv(A^{t-1})``, A-rounds ``ΔA = pinv(B^{t-1})·ΔW``, both in factored order
  (:mod:`fedlora.ops.solve`), so no m×n matrix is formed. The delta is sparsified with DARE
  (drop ``p_down``, survivors × ``1/(1 − p_down)``) and this sparse delta is both added to the
  server's global adapter and broadcast; clients add the same delta (:mod:`.synced`).

Departures and choices:

- Round 1 is a B-round (the paper's odd rounds). The authors' code starts with an A-round,
  where ``pinv(B^0) = pinv(0) = 0`` makes round 1's update vanish; that is not copied.
- Rescaling the pruned client deltas by ``Σ|Δ| / Σ|Δ_pruned|`` comes from the authors' code,
  not the paper; it is on by default (``rescale = True``) and can be turned off.
- Quantile: linear interpolation between order statistics (``torch.quantile``'s default, as
  the authors' code uses). Kept: scores strictly above it, the paper's rule; the authors'
  code zeroes scores ``< q`` and so also keeps a score exactly equal to ``q``, which differs
  only when ``q`` coincides with a score. ``rho`` is capped at ``(N−1)/N`` (and the tied
  maximum kept) so at least one element survives, which lets ``base + upper`` exceed 1 (the
  paper sweeps base up to 0.95 with ``upper = 0.11``); the authors' code would hand
  ``torch.quantile`` a ratio above 1. ``rho = 0`` keeps everything (the authors skip pruning
  then). Kept elements whose delta is exactly 0 are left out of the upload.
- Rescale guard: as the authors' code, no rescale when ``Σ|Δ_pruned| <= 1e-9``.
- Kurtosis is Pearson's (population moments, normal = 3); constant scores (undefined
  kurtosis) give ``rho = base``.
- The downlink DARE positions come from a seed derived from the run seed, the round and the
  layer (:func:`downlink_seed`), so the wire can send the seed; clients check it.
- Aggregation weights follow ``setup.weighting`` (the paper uses uniform weights).
- Uploads are aggregated in client-id order, so the result does not depend on arrival order.
- First broadcast: the initial ``A^0`` (PEFT init from the server seed) as its seed and init
  rule, which clients rebuild (``common.initial_payload``), and ``B^0 = 0`` as an empty
  sparse tensor: a few hundred bytes instead of the dense ``A^0``.
- Ablations (Table 4 of the paper) are options: ``sparsifier`` (importance / magnitude /
  random, all at the ratio the importance scores give), ``reconstruct = false`` and
  ``decompose = "dense"`` (FedSRD only); see :class:`FedSRDConfig`.
- ``upload_report`` records per round the ratios chosen (mean / min / max over layers) and
  ``‖ΔA‖/‖A‖``, ``‖ΔB‖/‖B‖`` of the client's local update (Appendix F of the paper).
- Heterogeneous ranks (or alphas) are refused: the method keeps one shared global adapter.

The project's reference for this method's maths and invariants: docs/methods.md
("FedSRD and FedSRD-e").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedlora.errors import ConfigError, PayloadError
from fedlora.methods import synced
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    Lora,
    Payload,
    Schema,
    ServerState,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import dense, initial_payload, key, lora_payload
from fedlora.methods.fedsrd_report import norms_of, stability_report, update_ratio
from fedlora.methods.fedsrd_server import (
    LayerInputs,
    Solved,
    averaged_aggregate,
    balanced_factors,
    batched_targets,
    least_squares_step,
    projected_shapes,
    projected_terms,
    projected_updates,
)
from fedlora.methods.registry import register
from fedlora.methods.secure import Shapes
from fedlora.ops.factored import numerical_rank, truncated_factors
from fedlora.ops.masks import dare_dense_
from fedlora.ops.ratio import SPARSIFIERS, SUPPORTS, RatioRule
from fedlora.ops.scratch import Scratch
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.seeds import label_seed
from fedlora.ops.solve import Pinv, fixed_all, solve_a_clients, solve_b_clients
from fedlora.ops.sparse import Sparse
from fedlora.ops.sparsify import (
    SparseDelta,
    delta_scores,
    ratio_summary,
    sparsify_layer,
)
from fedlora.validate import flag, number, one_of

log = logging.getLogger(__name__)


DECOMPOSITIONS = ("alternating", "dense")


@dataclass(frozen=True)
class FedSRDConfig(RatioRule):
    """Options of FedSRD / FedSRD-e.

    The upload ratio rule (``base``, ``coeff``, ``upper``, ``fixed_rho``, ``rescale``) is
    :class:`~fedlora.ops.sparsify.RatioRule`'s; ``p_down`` is the downlink DARE drop
    probability.

    Ablations (the paper's Table 4): ``sparsifier`` = "importance" | "magnitude" | "random"
    (same ratio rule); ``reconstruct = false`` aggregates the sparse factor deltas directly
    (``W = (B + Σ p_k ΔB_k)(A + Σ p_k ΔA_k)``) instead of reconstructing ``Σ p_k B_k A_k``;
    ``decompose = "dense"`` broadcasts the rank-r truncated factors of the aggregate
    (dense A and B) instead of one sparse factor delta (FedSRD only: FedSRD-e has no rank-r
    truncation to broadcast).
    """

    p_down: float = 0.8
    sparsifier: str = "importance"
    reconstruct: bool = True
    decompose: str = "alternating"
    support: str = "global"
    """Where the kept share of a factor delta is counted: over the whole matrix (the paper's)
    or within each rank slot, ``ΔB``'s columns and ``ΔA``'s rows ("per-rank")."""
    ridge: float = 0.0
    """Tikhonov term of the least-squares step, relative to the largest eigenvalue of the
    solved-against factor's Gram matrix (0: the paper's pseudo-inverse; docs/methods.md,
    "FedSRD's stability")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        number("p_down", self.p_down, at_least=0.0, below=1.0)
        number("ridge", self.ridge, at_least=0.0, below=1.0)
        one_of("sparsifier", self.sparsifier, SPARSIFIERS)
        flag("reconstruct", self.reconstruct)
        one_of("decompose", self.decompose, DECOMPOSITIONS)
        one_of("support", self.support, SUPPORTS)


def active_factor(round_: int) -> str:
    """The factor the server updates in round ``round_`` (1-based): odd "B", even "A"."""
    if round_ < 1:
        raise ValueError(f"rounds count from 1, got {round_}")
    return "B" if round_ % 2 == 1 else "A"


def downlink_seed(run_seed: int, round_: int, layer: str) -> int:
    """Seed of the downlink DARE mask of ``layer`` in round ``round_`` (both sides derive it)."""
    return label_seed(run_seed, "fedsrd-downlink", round_, layer)


def upload_seed(seed: int, layer: str) -> int:
    """Seed of a client's random upload mask (``sparsifier = "random"``) for ``layer``."""
    return label_seed(seed, "fedsrd-uplink", layer)


def _keys(layer: str, factor: str) -> tuple[str, str, str]:
    """A layer's entries of the new state, in the order the state keeps them."""
    return key(layer, "A"), key(layer, "B"), key(layer, "d" + factor)


class _FedSRDBase(synced.DeltaSynced[FedSRDConfig]):
    """FedSRD's round; subclasses choose the decomposition of the aggregate (see module doc)."""

    name = "fedsrd"

    @property
    def dp_refusal(self) -> str | None:  # type: ignore[override]
        """With ``reconstruct = false`` the server averages the uploaded deltas (a weighted
        sum); reconstructing forms each client's own product first."""
        if not self.config.reconstruct:
            return None
        return (
            "it reconstructs each client's own product B_k A_k before aggregating (set "
            f"method.{self.name}.reconstruct = false, which averages the uploaded deltas)"
        )

    # -- setup and state -------------------------------------------------------------------

    def init_server(self) -> ServerState:
        return synced.initial_state(self.setup, {"updated": None})

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return initial_payload(self.setup, self.setup.max_rank, self.setup.seed)
        if self.config.decompose == "dense":
            return lora_payload(synced.global_lora(state, self.setup))
        part = "d" + active_factor(state.round)
        keep = 1.0 - self.config.p_down
        out: Payload = {}
        for s in self.setup.layers:
            applied = state.tensors.get(key(s.name, part))
            if applied is None:  # nothing pending: the last round was skipped
                continue
            # The stored delta is zero off the seeded mask, so re-extracting it on that mask
            # reproduces the sparse tensor the server applied, values included.
            out[key(s.name, part)] = Sparse.from_seeded_mask(
                applied, downlink_seed(self.setup.seed, state.round, s.name), keep
            )
        return out

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        def check(layer: str, part: str, delta: Sparse | Tensor | SeededInit, round_: int) -> None:
            if part != active_factor(round_):
                raise PayloadError(f"round {round_} updates {active_factor(round_)}, got Δ{part}")
            expected = downlink_seed(self.setup.seed, round_, layer)
            if isinstance(delta, Sparse) and delta.mask_seed not in (None, expected):
                raise PayloadError(
                    f"{layer}: downlink mask seed does not match round {round_}; this client's "
                    "global adapter is out of sync"
                )

        new_view = synced.apply_broadcast(view, payload, self.setup, check)
        return ClientStart(adapter=synced.lora_from_view(new_view, self.setup), view=new_view)

    # -- uplink ----------------------------------------------------------------------------

    def upload_schema(self, client: ClientSpec) -> Schema:
        return synced.delta_schema(self.setup, client.rank)

    def _sparsified(
        self, start: ClientStart, trained: Lora, seed: int
    ) -> dict[str, tuple[SparseDelta, SparseDelta]]:
        cfg = self.config
        out = {}
        for s in self.setup.layers:
            old = (start.view[key(s.name, "A")], start.view[key(s.name, "B")])
            new = (trained[s.name].A.detach(), trained[s.name].B.detach())
            out[s.name] = sparsify_layer(
                old, new, cfg, cfg.sparsifier, cfg.rescale, upload_seed(seed, s.name), cfg.support
            )
        return out

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        out: Payload = {}
        for layer, (d_a, d_b) in self._sparsified(start, trained, seed).items():
            log.debug(
                "client %d layer %s: rho_A %.4f rho_B %.4f", client.cid, layer, d_a.rho, d_b.rho
            )
            out[key(layer, "dA")] = d_a.delta
            out[key(layer, "dB")] = d_b.delta
        return out

    def upload_report(
        self, start: ClientStart, trained: Lora, upload: Payload, client: ClientSpec
    ) -> dict[str, Any]:
        """Per-matrix ratios (mean, min, max over layers), the relative size of the
        client's local update of each factor, ``‖ΔA‖/‖A‖`` and ``‖ΔB‖/‖B‖`` (all layers
        together; null while the factor is zero, as B is in round 1), and the numerical rank
        of the kept ``ΔB`` as a share of r (mean, min, max over layers: a support collapsed
        onto a few whole columns shows here), read from the uploaded ``ΔB``."""
        rho: dict[str, list[float]] = {"A": [], "B": []}
        olds: dict[str, list[Tensor]] = {"A": [], "B": []}
        news: dict[str, list[Tensor]] = {"A": [], "B": []}
        for s in self.setup.layers:
            a_old, b_old = start.view[key(s.name, "A")], start.view[key(s.name, "B")]
            a_new, b_new = trained[s.name].A.detach(), trained[s.name].B.detach()
            rho["A"].append(self.config.ratio(delta_scores("A", a_new - a_old, a_old, b_new)))
            rho["B"].append(self.config.ratio(delta_scores("B", b_new - b_old, a_old, b_new)))
            olds["A"].append(a_old)
            olds["B"].append(b_old)
            news["A"].append(a_new)
            news["B"].append(b_new)
        kept_rank = [
            numerical_rank(torch.linalg.svdvals(dense(upload[key(s.name, "dB")]).double()))
            / client.rank
            for s in self.setup.layers
        ]
        return {
            "rho_A": ratio_summary(rho["A"]),
            "rho_B": ratio_summary(rho["B"]),
            "update_ratio_A": update_ratio(olds["A"], news["A"]),
            "update_ratio_B": update_ratio(olds["B"], news["B"]),
            "kept_rank_B": ratio_summary(kept_rank),
        }

    # -- server ----------------------------------------------------------------------------

    def step(
        self,
        layer: LayerInputs,
        factor: str,
        target: Factored | None,
        pinv: Pinv,
        scratch: Scratch,
    ) -> Solved:
        """One layer's least-squares update of ``factor`` toward ``W_r − B^{t-1}A^{t-1}``
        (``target``: ``W_r`` from :meth:`targets`, None where the method needs none;
        ``pinv``: the layer's :func:`~fedlora.ops.solve.fixed`, built with the round's others
        in one batch; ``scratch``: working buffers shared by the round's layers)."""
        raise NotImplementedError

    def targets(
        self, layers: Mapping[str, LayerInputs], rank: int
    ) -> Iterator[tuple[str, Factored | None]]:
        """Every layer with its rank-r ``W_r``, factored, computed as it is consumed
        (FedSRD only: FedSRD-e needs none and yields None)."""
        return ((name, None) for name in layers)

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        ordered = sorted(uploads, key=lambda u: u.cid)
        weights = aggregation_weights(ordered, self.setup.weighting)
        factor = active_factor(state.round + 1)
        layers: dict[str, LayerInputs] = {}
        for s in self.setup.layers:
            a_prev = state.tensors[key(s.name, "A")]
            b_prev = state.tensors[key(s.name, "B")]
            layers[s.name] = LayerInputs(
                a_prev,
                b_prev,
                [
                    (
                        p,
                        synced.upload_entry(u.payload, s.name, "A", a_prev),
                        synced.upload_entry(u.payload, s.name, "B", b_prev),
                    )
                    for p, u in zip(weights, ordered, strict=True)
                ],
            )
        if self.config.decompose == "dense":
            tensors: dict[str, Tensor] = {}
            for name, target in self.targets(layers, self.setup.max_rank):
                assert target is not None
                new = balanced_factors(target, self.setup.max_rank)
                tensors[key(name, "A")], tensors[key(name, "B")] = new.A, new.B
            ordered_ = {k: tensors[k] for name in layers for k in (key(name, "A"), key(name, "B"))}
            return ServerState(round=state.round + 1, tensors=ordered_, meta={"updated": "AB"})
        scratch = Scratch()
        pairs = [(layer.a_prev, layer.b_prev) for layer in layers.values()]
        pinvs = dict(zip(layers, fixed_all(factor, pairs, self.config.ridge), strict=True))
        updates = (
            (name, self.step(layers[name], factor, target, pinvs.pop(name), scratch))
            for name, target in self.targets(layers, self.setup.max_rank)
        )
        return self.applied(state, updates)

    def applied(self, state: ServerState, updates: Iterable[tuple[str, Solved]]) -> ServerState:
        """The new state from each layer's least-squares update of the round's factor: the
        update thinned by DARE (:func:`downlink_seed`, in place: the updates are consumed) is
        added to the global factor and kept as the delta to broadcast."""
        round_ = state.round + 1
        factor = active_factor(round_)
        tensors: dict[str, Tensor] = {}
        conditions: list[float] = []
        for name, (update, cond) in updates:
            a_prev = state.tensors[key(name, "A")]
            b_prev = state.tensors[key(name, "B")]
            conditions.append(cond)
            applied = dare_dense_(
                update, self.config.p_down, downlink_seed(self.setup.seed, round_, name)
            )
            prev = {"A": a_prev, "B": b_prev}
            for part in ("A", "B"):
                delta = applied if part == factor else None
                tensors[key(name, part)] = synced.add_delta(prev[part], delta)
            tensors[key(name, "d" + factor)] = applied
        names = [s.name for s in self.setup.layers]
        tensors = {k: tensors[k] for name in names for k in _keys(name, factor) if k in tensors}
        meta: dict[str, Any] = {"updated": factor}
        if conditions:
            before = norms_of(state.tensors, self.setup, state.meta)
            # the factor the round left alone kept its norm
            after = {**before, **norms_of(tensors, self.setup, parts=(factor,))}
            meta["report"] = stability_report(factor, conditions, before, after)
        return ServerState(round=round_, tensors=tensors, meta=meta)


@register("fedsrd", FedSRDConfig)
class FedSRD(_FedSRDBase):
    """FedSRD: the aggregate is truncated to rank r by a factored SVD before the solve."""

    name = "fedsrd"

    def targets(
        self, layers: Mapping[str, LayerInputs], rank: int
    ) -> Iterator[tuple[str, Factored | None]]:
        if not self.config.reconstruct:
            return (
                (name, truncated_factors(*averaged_aggregate(a, b, deltas), rank))
                for name, (a, b, deltas) in layers.items()
            )
        return batched_targets(layers, rank)

    def step(
        self,
        layer: LayerInputs,
        factor: str,
        target: Factored | None,
        pinv: Pinv,
        scratch: Scratch,
    ) -> Solved:
        assert target is not None
        update = least_squares_step(target, layer.a_prev, layer.b_prev, factor, pinv=pinv)
        return Solved(update, pinv.condition)


@register("fedsrd-e", FedSRDConfig)
class FedSRDE(_FedSRDBase):
    """FedSRD-e: no SVD; the least-squares step targets the full aggregate."""

    name = "fedsrd-e"

    def validate(self) -> None:
        super().validate()
        if self.config.decompose == "dense":
            raise ConfigError(
                "method.fedsrd-e.decompose: 'dense' broadcasts the rank-r truncation of the "
                "aggregate, which FedSRD-e does not compute; use method = fedsrd for it"
            )

    @property
    def secure_refusal(self) -> str | None:  # type: ignore[override]
        """Its step needs only the mean of per-client projected terms (docs/methods.md),
        unless ``reconstruct = false`` makes the target a product of averaged deltas."""
        if self.config.reconstruct:
            return None
        return (
            "with reconstruct = false its target is the product of the averaged deltas, not "
            "a mean of per-client terms"
        )

    def secure_shapes(self, client: ClientSpec, round_: int) -> Shapes:
        """A B-round's term is m×r per layer, an A-round's r×n (``layer.PB`` / ``layer.PA``)."""
        return projected_shapes(self.setup, client.rank, active_factor(round_))

    def secure_terms(
        self, start: ClientStart, upload: Payload, client: ClientSpec, round_: int
    ) -> dict[str, Tensor]:
        """The client's reconstruction change seen through the fixed factor
        (:func:`fedlora.ops.solve.projected_change`), from its sparsified deltas."""
        return projected_terms(start.view, upload, self.setup, active_factor(round_))

    def aggregate_mean(
        self,
        state: ServerState,
        mean: Mapping[str, Tensor],
        reference: Mapping[str, Tensor],
        round_: int,
    ) -> ServerState:
        """The step from the mean projected term (:func:`fedlora.ops.solve.solve_projected`),
        then as :meth:`aggregate`."""
        factor = active_factor(state.round + 1)
        updates = projected_updates(state.tensors, mean, self.setup, factor, self.config.ridge)
        return self.applied(state, updates)

    def step(
        self,
        layer: LayerInputs,
        factor: str,
        target: Factored | None,
        pinv: Pinv,
        scratch: Scratch,
    ) -> Solved:
        a_prev, b_prev, deltas = layer
        if not self.config.reconstruct:
            target = averaged_aggregate(a_prev, b_prev, deltas)
            update = least_squares_step(target, a_prev, b_prev, factor, pinv=pinv)
            return Solved(update, pinv.condition)
        # The full aggregate's step needs no stack of products: r×r products (ops.solve).
        solve = solve_b_clients if factor == "B" else solve_a_clients
        return Solved(solve(a_prev, b_prev, deltas, pinv=pinv, scratch=scratch), pinv.condition)
