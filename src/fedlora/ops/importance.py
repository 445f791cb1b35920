"""Element-wise importance of LoRA factor updates and FedSRD's adaptive sparsity ratio.

FedSRD (arXiv 2510.04601) scores every element of a factor update by the Frobenius norm of
the rank-1 matrix that element adds to ``ΔW = B·A``. An element ``ΔB[u, v]`` adds
``ΔB[u, v] · e_u A[v, :]``, whose norm is ``|ΔB[u, v]| · ||A[v, :]||_2``; an element
``ΔA[u, v]`` adds ``B[:, u] · ΔA[u, v] e_vᵀ``, of norm ``|ΔA[u, v]| · ||B[:, u]||_2``.
Which A and B enter is the caller's choice; FedSRD uses the OLD global A for ``I_B`` and the
NEW local B for ``I_A``.

The sparsity ratio of a matrix grows with the tail-heaviness of its scores:
``rho = base + min(upper, coeff · ln(max(kurt, 1)))`` with ``kurt`` the Pearson kurtosis.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def importance_b(delta_b: Tensor, a: Tensor) -> Tensor:
    """Scores ``I_B[u, v] = |ΔB[u, v]| · ||A[v, :]||_2``.

    Parameters
    ----------
    delta_b : (m, r) tensor
        Update of the B factor.
    a : (r, n) tensor
        The A factor the update multiplies (FedSRD: the old global A).

    Returns
    -------
    (m, r) tensor of non-negative scores, in ``delta_b``'s dtype.
    """
    if delta_b.ndim != 2 or a.ndim != 2 or delta_b.shape[1] != a.shape[0]:
        raise ValueError(f"ΔB {tuple(delta_b.shape)} does not chain with A {tuple(a.shape)}")
    row_norms = torch.linalg.vector_norm(a, dim=1).to(delta_b.dtype)
    # Tensor arithmetic operators are typed loosely (Any) in torch's stubs.
    scores: Tensor = delta_b.abs() * row_norms.unsqueeze(0)
    return scores


def importance_a(delta_a: Tensor, b: Tensor) -> Tensor:
    """Scores ``I_A[u, v] = |ΔA[u, v]| · ||B[:, u]||_2``.

    Parameters
    ----------
    delta_a : (r, n) tensor
        Update of the A factor.
    b : (m, r) tensor
        The B factor multiplying the update (FedSRD: the client's new local B).

    Returns
    -------
    (r, n) tensor of non-negative scores, in ``delta_a``'s dtype.
    """
    if delta_a.ndim != 2 or b.ndim != 2 or b.shape[1] != delta_a.shape[0]:
        raise ValueError(f"B {tuple(b.shape)} does not chain with ΔA {tuple(delta_a.shape)}")
    col_norms = torch.linalg.vector_norm(b, dim=0).to(delta_a.dtype)
    scores: Tensor = delta_a.abs() * col_norms.unsqueeze(1)
    return scores


def pearson_kurtosis(scores: Tensor) -> float:
    """Pearson (non-excess) kurtosis ``m4 / m2²`` of the flattened ``scores``.

    Population (biased) central moments, accumulated in float64. A normal distribution gives
    3, a uniform one 1.8, a symmetric two-point one 1 (the minimum).

    Returns
    -------
    float
        The kurtosis, or ``nan`` when the scores have zero variance (kurtosis is undefined
        for a constant; fewer than one element is an error).
    """
    flat = scores.reshape(-1).to(torch.float64)
    if flat.numel() == 0:
        raise ValueError("kurtosis of an empty tensor is undefined")
    centred = flat - flat.mean()
    sq = centred * centred
    m2 = float(sq.mean())
    if m2 == 0.0:
        return math.nan
    m4 = float((sq * sq).mean())
    return m4 / (m2 * m2)


def adaptive_ratio(kurtosis: float, base: float, coeff: float, upper: float) -> float:
    """FedSRD's sparsity ratio ``rho = base + min(upper, coeff · ln(max(kurt, 1)))``.

    A ``nan`` kurtosis (constant scores: no tail at all) counts as 1, giving ``rho = base``.
    """
    kurt = 1.0 if math.isnan(kurtosis) else max(kurtosis, 1.0)
    return base + min(upper, coeff * math.log(kurt))


def adaptive_sparsity(scores: Tensor, base: float, coeff: float, upper: float) -> float:
    """``adaptive_ratio`` of the Pearson kurtosis of ``scores``."""
    return adaptive_ratio(pearson_kurtosis(scores), base, coeff, upper)
