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
    left : (m, q) tensor
    right : (q, n) tensor

    Returns
    -------
    U (m, q'), S (q',), V (n, q') with ``left @ right == U @ diag(S) @ V.T`` and
    ``q' = min(q, m, n)``; singular values in descending order.
    """
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
    q_l, t_l = torch.linalg.qr(left, mode="reduced")
    q_r, t_r = torch.linalg.qr(right.T, mode="reduced")
    u_c, s, vh_c = torch.linalg.svd(t_l @ t_r.T, full_matrices=False)
    return q_l @ u_c, s, q_r @ vh_c.T


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


def truncated_factors(left: Tensor, right: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` truncated SVD of ``left @ right`` as ``(U_k diag(S_k), V_kᵀ)``."""
    u, s, v = factored_svd(left, right)
    k = min(rank, s.numel())
    return u[:, :k] * s[:k], v[:, :k].T.contiguous()
