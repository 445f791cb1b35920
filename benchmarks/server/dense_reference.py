"""Dense references of every method's server step, computed the way the authors' code does.

These functions are deliberately naive and independent of the project's factored code
(nothing from ``fedlora.ops`` or ``fedlora.methods`` is used): each client's ``B_k A_k`` is
formed as an m×n matrix, SVDs are full ``torch.linalg.svd`` calls on m×n matrices, and
pseudo-inverses are dense ``torch.linalg.pinv``. They serve two purposes in
``python -m benchmarks.server``: a timing baseline (what the factored kernels save) and an
independent check of the project's result (relative Frobenius error of the global update).

Every reference takes one layer's :class:`LayerInputs` and returns the dense m×n *global
update after the round, scaling folded in* — the matrix the project's ``global_delta``
returns in factored form. Where a method's server also produces per-client objects (FlexLoRA's
per-client truncations) the reference computes them too, so its time covers the same work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Tensor = torch.Tensor

RELATIVE_RANK_CUTOFF = 1e-7
"""Singular values at or below ``S[0]·cutoff`` are treated as float noise (FLoRIST ``tau=1``)."""


@dataclass(frozen=True)
class LayerInputs:
    """Everything the server step of one layer sees, as dense tensors.

    ``uploads[k]`` maps a payload part (``"A"``, ``"B"``, ``"dA"``, ``"dB"``) of client k to
    its dense value; ``starts[k]`` is the ``(A, B)`` client k started its local training from
    (the synchronised global adapter for FedSRD / Fed-DARE, the frozen A for FFA-LoRA);
    ``n_samples``, ``ranks`` and ``alphas`` describe the clients (in client-id order);
    ``round`` is the round being aggregated (1-based); ``options`` the method's config values.
    """

    uploads: tuple[Mapping[str, Tensor], ...]
    starts: tuple[tuple[Tensor, Tensor], ...]
    n_samples: tuple[int, ...]
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]
    round: int = 1
    weighting: str = "samples"
    options: Mapping[str, Any] = field(default_factory=dict)
    b_basis: Tensor | None = None
    """Fed-SB's fixed ``B`` (m×r); ``starts[k]`` then holds ``(A, R_k)``, the core."""

    def weights(self) -> list[float]:
        """``p_k``: ``n_k / Σ n_j`` or uniform."""
        k = len(self.n_samples)
        if self.weighting == "uniform":
            return [1.0 / k] * k
        total = float(sum(self.n_samples))
        return [n / total for n in self.n_samples]

    def scalings(self) -> list[float]:
        """``s_k = alpha_k / r_k``."""
        return [a / r for a, r in zip(self.alphas, self.ranks, strict=True)]

    def global_scaling(self) -> float:
        """Scaling of the global adapter: that of the highest-rank client (ties: larger alpha)."""
        rank, alpha = max(zip(self.ranks, self.alphas, strict=True))
        return alpha / rank


Reference = Callable[[LayerInputs], Tensor]


def _pad(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Zero-pad ``A`` (rows) and ``B`` (columns) to ``rank``."""
    a_out = torch.zeros(rank, a.shape[1], dtype=a.dtype)
    b_out = torch.zeros(b.shape[0], rank, dtype=b.dtype)
    a_out[: a.shape[0]] = a
    b_out[:, : b.shape[1]] = b
    return a_out, b_out


def _dense_sum(inp: LayerInputs) -> Tensor:
    """``Σ p_k s_k B_k A_k`` accumulated as m×n matrices, one client at a time."""
    total: Tensor | None = None
    for p, s, up in zip(inp.weights(), inp.scalings(), inp.uploads, strict=True):
        term = (p * s) * (up["B"] @ up["A"])
        total = term if total is None else total + term
    assert total is not None
    return total


def _svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.linalg.svd(matrix, full_matrices=False)


def fedavg(inp: LayerInputs) -> Tensor:
    """FedIT: ``s_g (Σ p_k B_k)(Σ p_k A_k)``, factors zero-padded to the largest rank."""
    rank = max(inp.ranks)
    a_bar: Tensor | None = None
    b_bar: Tensor | None = None
    for p, up in zip(inp.weights(), inp.uploads, strict=True):
        a, b = _pad(up["A"], up["B"], rank)
        a_bar = p * a if a_bar is None else a_bar + p * a
        b_bar = p * b if b_bar is None else b_bar + p * b
    assert a_bar is not None and b_bar is not None
    return inp.global_scaling() * (b_bar @ a_bar)


def ffa(inp: LayerInputs) -> Tensor:
    """FFA-LoRA: ``s (Σ p_k B_k) A`` with the shared frozen A."""
    b_bar = sum(p * up["B"] for p, up in zip(inp.weights(), inp.uploads, strict=True))
    return inp.scalings()[0] * (b_bar @ inp.starts[0][0])  # type: ignore[operator]


def flora(inp: LayerInputs) -> Tensor:
    """FLoRA: the dense product of the stacked factors ``[B_1 … B_K]·[p_1 s_1 A_1; …]``."""
    coeffs = [p * s for p, s in zip(inp.weights(), inp.scalings(), strict=True)]
    b_st = torch.cat([up["B"] for up in inp.uploads], dim=1)
    a_st = torch.cat([c * up["A"] for c, up in zip(coeffs, inp.uploads, strict=True)], dim=0)
    return b_st @ a_st


def _energy_rank(s: Tensor, tau: float) -> int:
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0
    if tau >= 1.0:
        return int((s > s[0] * RELATIVE_RANK_CUTOFF).sum())
    energy = s.double() ** 2
    cumulative = torch.cumsum(energy, 0) / energy.sum()
    return int((cumulative < tau).sum()) + 1


def florist(inp: LayerInputs) -> Tensor:
    """FLoRIST: dense ``ΔW = Σ p_k s_k B_k A_k``, full SVD, keep the energy-``tau`` rank."""
    u, s, vh = _svd(_dense_sum(inp))
    k = _energy_rank(s, float(inp.options.get("tau", 0.9)))
    return (u[:, :k] * s[:k]) @ vh[:k]


def flexlora(inp: LayerInputs) -> Tensor:
    """FlexLoRA: dense ``ΔW``, full SVD, and each client's rank-``r_i`` truncation.

    The per-client pairs (the broadcast) are computed because the authors' server computes
    them; the global update is ``ΔW`` itself.
    """
    delta = _dense_sum(inp)
    u, s, vh = _svd(delta)
    for rank, scaling in zip(inp.ranks, inp.scalings(), strict=True):
        b_i = u[:, :rank] * (s[:rank] / scaling)
        a_i = vh[:rank].clone()
        del b_i, a_i
    return delta


def fedex(inp: LayerInputs) -> Tensor:
    """FedEx-LoRA: ``s B̄Ā`` plus the dense residual ``Σ p_k s B_k A_k − s B̄Ā``."""
    weights = inp.weights()
    s = inp.scalings()[0]
    a_bar = sum(p * up["A"] for p, up in zip(weights, inp.uploads, strict=True))
    b_bar = sum(p * up["B"] for p, up in zip(weights, inp.uploads, strict=True))
    mean_product = s * (b_bar @ a_bar)  # type: ignore[operator]
    res = _dense_sum(inp) - mean_product
    return mean_product + res


def _fedsrd(inp: LayerInputs, truncate: bool) -> Tensor:
    """FedSRD's server as the authors' code computes it, with the downlink DARE off.

    ``W = Σ p_k (B + ΔB_k)(A + ΔA_k)`` dense; FedSRD: rank-r truncation by a full SVD;
    ``ΔW = W_r − B A``; odd rounds ``ΔB = ΔW pinv(A)``, even rounds ``ΔA = pinv(B) ΔW``;
    returns ``s (B + ΔB)(A + ΔA)``.
    """
    a_prev, b_prev = inp.starts[0]
    total: Tensor | None = None
    for p, up in zip(inp.weights(), inp.uploads, strict=True):
        term = p * ((b_prev + up["dB"]) @ (a_prev + up["dA"]))
        total = term if total is None else total + term
    assert total is not None
    if truncate:
        rank = max(inp.ranks)
        u, s, vh = _svd(total)
        total = (u[:, :rank] * s[:rank]) @ vh[:rank]
    delta_w = total - b_prev @ a_prev
    if inp.round % 2 == 1:
        b_new, a_new = b_prev + delta_w @ torch.linalg.pinv(a_prev), a_prev
    else:
        b_new, a_new = b_prev, a_prev + torch.linalg.pinv(b_prev) @ delta_w
    return inp.scalings()[0] * (b_new @ a_new)


def fedsrd(inp: LayerInputs) -> Tensor:
    """FedSRD (see :func:`_fedsrd`)."""
    return _fedsrd(inp, truncate=True)


def fedsrd_e(inp: LayerInputs) -> Tensor:
    """FedSRD-e: FedSRD without the SVD."""
    return _fedsrd(inp, truncate=False)


def fed_dare(inp: LayerInputs) -> Tensor:
    """Fed-DARE: the global adapter plus the weighted average of the (sparse) deltas."""
    a_prev, b_prev = inp.starts[0]
    weights = inp.weights()
    a_new = a_prev + sum(p * up["dA"] for p, up in zip(weights, inp.uploads, strict=True))
    b_new = b_prev + sum(p * up["dB"] for p, up in zip(weights, inp.uploads, strict=True))
    return inp.scalings()[0] * (b_new @ a_new)


def rolora(inp: LayerInputs) -> Tensor:
    """RoLoRA: odd rounds add the weighted mean ``ΔB``, even rounds the mean ``ΔA``."""
    a_prev, b_prev = inp.starts[0]
    weights = inp.weights()
    if inp.round % 2 == 1:
        b_prev = b_prev + sum(p * up["dB"] for p, up in zip(weights, inp.uploads, strict=True))
    else:
        a_prev = a_prev + sum(p * up["dA"] for p, up in zip(weights, inp.uploads, strict=True))
    return inp.scalings()[0] * (b_prev @ a_prev)


def fedsvd(inp: LayerInputs) -> Tensor:
    """FedSVD as the authors' code does it: ``B̄·A`` formed densely, a full SVD, and the
    product of its rank-r factors ``(U_r S_r)·V_rᵀ``."""
    b_bar = sum(p * up["B"] for p, up in zip(inp.weights(), inp.uploads, strict=True))
    product = b_bar @ inp.starts[0][0]  # type: ignore[operator]
    u, s, vh = _svd(product)
    rank = max(inp.ranks)
    return inp.scalings()[0] * ((u[:, :rank] * s[:rank]) @ vh[:rank])


def fed_sb(inp: LayerInputs) -> Tensor:
    """Fed-SB: ``s·B·(Σ p_k R_k)·A`` with the fixed ``B`` and ``A``."""
    assert inp.b_basis is not None
    r_bar = sum(p * up["R"] for p, up in zip(inp.weights(), inp.uploads, strict=True))
    return inp.scalings()[0] * (inp.b_basis @ r_bar @ inp.starts[0][0])  # type: ignore[operator]


def references() -> dict[str, Reference]:
    """Registered method name -> its dense reference (FedProx's server is FedAvg's; FedSA-LoRA
    has none: its global update is the shared A with B = 0, the base model)."""
    return {
        "fedavg": fedavg,
        "fedprox": fedavg,
        "ffa": ffa,
        "flora": flora,
        "florist": florist,
        "flexlora": flexlora,
        "fedex": fedex,
        "fedsrd": fedsrd,
        "fedsrd-e": fedsrd_e,
        "fed_dare": fed_dare,
        "rolora": rolora,
        "fedsvd": fedsvd,
        "fed_sb": fed_sb,
    }


def relative_error(result: Tensor, reference: Tensor) -> float:
    """``||result − reference||_F / ||reference||_F`` in float64 (0 when both are zero)."""
    diff = float(torch.linalg.matrix_norm(result.double() - reference.double()))
    norm = float(torch.linalg.matrix_norm(reference.double()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def stacked_bytes(
    ranks: Sequence[int], out_features: int, in_features: int, itemsize: int = 4
) -> int:
    """Bytes of the stacked client factors of one layer: ``Σ_k r_k (m + n) · itemsize``."""
    return sum(ranks) * (out_features + in_features) * itemsize
