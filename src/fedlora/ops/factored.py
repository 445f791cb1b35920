"""SVD of a matrix given as a product of thin factors, without forming it.

For ``M = L @ R`` with L (m×q), R (q×n), q << min(m, n): thin QR ``L = Q_L T_L`` and
``Rᵀ = Q_R T_R``, SVD of the q×q core ``T_L T_Rᵀ = U_c S V_cᵀ``, then ``U = Q_L U_c`` and
``V = Q_R V_c``. Cost O((m+n)q² + q³), memory O((m+n)q); the m×n matrix never exists.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

RELATIVE_RANK_CUTOFF = 1e-7
"""Singular values at or below ``S[0] * cutoff`` are float noise, not rank."""


def factored_svd(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``left @ right``.

    Parameters
    ----------
    left : (m, q) tensor, or (b, m, q) for a batch of b products
    right : (q, n) tensor, or (b, q, n)

    Returns
    -------
    U (m, q'), S (q',), V (n, q') with ``left @ right == U @ diag(S) @ V.T`` and
    ``q' = min(q, m, n)``; singular values in descending order. Batched inputs give batched
    outputs (a leading b), each entry what the 2-D call on it returns.
    """
    _check_chain(left, right)
    q_l, t_l = torch.linalg.qr(left, mode="reduced")
    q_r, t_r = torch.linalg.qr(right.mT, mode="reduced")
    u_c, s, vh_c = torch.linalg.svd(t_l @ t_r.mT, full_matrices=False)
    return q_l @ u_c, s, q_r @ vh_c.mT


def _check_chain(left: Tensor, right: Tensor) -> None:
    """Both 2-D or both 3-D with one batch size, and ``left``'s columns ``right``'s rows."""
    if left.ndim not in (2, 3) or right.ndim != left.ndim or left.shape[-1] != right.shape[-2]:
        raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
    if left.shape[:-2] != right.shape[:-2]:
        raise ValueError(f"batches differ: {tuple(left.shape)} and {tuple(right.shape)}")


def numerical_rank(s: Tensor, cutoff: float = RELATIVE_RANK_CUTOFF) -> int:
    """Number of singular values above ``s[0] * cutoff`` (0 for an all-zero spectrum)."""
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0
    return int((s > s[0] * cutoff).sum())


def energy_rank(s: Tensor, tau: float, cutoff: float = RELATIVE_RANK_CUTOFF) -> int:
    """Smallest k with ``Σ_{i<=k} s_i² / Σ_i s_i² >= tau`` (FLoRIST's energy threshold).

    ``tau = 1`` returns the numerical rank (values above ``s[0]·cutoff``), so float noise
    never counts as rank. Returns 0 for an all-zero spectrum.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"energy threshold tau must be in (0, 1], got {tau}")
    nrank = numerical_rank(s, cutoff)
    if nrank == 0:
        return 0
    if tau >= 1.0:
        return nrank
    energy = s[:nrank].double() ** 2
    cumulative = torch.cumsum(energy, 0) / energy.sum()
    k = int(torch.searchsorted(cumulative, torch.tensor([tau], dtype=cumulative.dtype)).item()) + 1
    return min(k, nrank)


def truncated_factors(
    left: Tensor, right: Tensor, rank: int, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` truncated SVD of ``left @ diag(weights) @ right`` as ``(U_k diag(S_k), V_kᵀ)``.

    ``weights`` (length q, default all ones) scale the columns of ``left``; passing them here
    instead of scaling ``left`` saves a pass over the m×q stack: ``left·D = Q_L (T_L D)``, so
    they only touch the q×q factors. Only the triangular factors of the two QRs are computed
    (no Q is formed): with ``L = Q_L T_L`` and ``Rᵀ = Q_R T_R``, the core
    ``T_L D T_Rᵀ = U_c S V_cᵀ`` gives ``U_k S_k = L D R V_k = L (D T_Rᵀ V_c,k)`` and
    ``V_kᵀ = S_k⁻¹ U_kᵀ L D R = S_k⁻¹ (U_c,kᵀ T_L D) R``. That halves the work of
    :func:`factored_svd` when only ``rank`` of the ``q`` directions are kept. Directions whose
    singular value is float noise get zero factors (their product is zero either way), so the
    product is exact up to float error; rows of ``V_kᵀ`` are orthonormal up to ``eps·S_1/S_i``.

    Batched: ``left`` (b, m, q), ``right`` (b, q, n) and ``weights`` (b, q) truncate b
    products of one shape in one call of each factorisation (what a GPU needs: one launch per
    kernel instead of one per layer); the 2-D call computes exactly what one batch entry does.
    """
    _check_chain(left, right)
    if weights is not None and tuple(weights.shape) != (*left.shape[:-2], left.shape[-1]):
        raise ValueError(f"weights {tuple(weights.shape)} do not match {left.shape[-1]} columns")
    t_l = torch.linalg.qr(left, mode="r").R
    t_r = torch.linalg.qr(right.mT, mode="r").R
    if weights is not None:
        t_l = t_l * weights.to(t_l.dtype).unsqueeze(-2)
    u_c, s, vh_c = torch.linalg.svd(t_l @ t_r.mT, full_matrices=False)
    k = min(rank, s.shape[-1])
    inner = t_r.mT @ vh_c[..., :k, :].mT
    if weights is not None:
        inner = weights.to(inner.dtype).unsqueeze(-1) * inner
    us = left @ inner
    kept = s[..., :k] > s[..., :1] * RELATIVE_RANK_CUTOFF
    inverse = torch.where(
        kept,
        1.0 / torch.where(kept, s[..., :k], torch.ones_like(s[..., :k])),
        torch.zeros_like(s[..., :k]),
    )
    vt = (inverse.unsqueeze(-1) * (u_c[..., :k].mT @ t_l)) @ right
    return us * kept.to(us.dtype).unsqueeze(-2), vt
