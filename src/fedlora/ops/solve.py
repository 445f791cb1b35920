"""Least-squares updates of one LoRA factor toward a target given in factored form.

The target update is ``ΔW = L @ R`` with thin L (m×q) and R (q×n); it is never formed.
For a fixed ``A`` (r×n) the best ``ΔB`` in Frobenius norm, ``argmin ||ΔB·A − ΔW||``, is
``ΔW·pinv(A)``; for a fixed ``B`` (m×r), ``argmin ||B·ΔA − ΔW||`` is ``pinv(B)·ΔW``
(minimum-norm solutions when A or B is rank-deficient). Both are evaluated so that every
intermediate is thin: ``L·(R·pinv(A))`` and ``(pinv(B)·L)·R``. Cost O((m+n)·q·r + (m+n)r²).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def _check_chain(left: Tensor, right: Tensor) -> None:
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")


class _Pinv:
    """``pinv(M) @ rhs`` for a tall thin ``M`` (k×r, k >= r) and any number of right-hand
    sides, from one eigendecomposition of the r×r Gram matrix: ``pinv(M) = V diag(1/λ) Vᵀ Mᵀ``
    over eigenvalues above the same relative cutoff as ``torch.linalg.pinv`` (on singular
    values, ``λ = σ²``). Costs O(k·r²) once and O(k·r·q) per right-hand side of q columns;
    the k×r pseudo-inverse is never built."""

    def __init__(self, matrix: Tensor) -> None:
        # The r×r algebra runs in float64: squaring σ into λ would otherwise cost float32 half
        # its digits.
        wide = matrix.double()
        lam, self.vec = torch.linalg.eigh(wide.T @ wide)
        top = lam.max().clamp(min=0)
        rtol = max(matrix.shape) * torch.finfo(matrix.dtype).eps
        keep = lam > (rtol**2) * top if top > 0 else torch.zeros_like(lam, dtype=torch.bool)
        self.inv = torch.where(
            keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam)
        )
        self.matrix = matrix

    def __call__(self, rhs: Tensor) -> Tensor:
        projected = (self.matrix.T @ rhs).double()
        # Tensor arithmetic operators are typed loosely (Any) in torch's stubs.
        solution: Tensor = (self.vec @ (self.inv[:, None] * (self.vec.T @ projected))).to(rhs.dtype)
        return solution


Terms = Sequence[tuple[Tensor, Tensor]]


def _total(parts: list[Tensor]) -> Tensor:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def solve_b_terms(terms: Terms, a: Tensor) -> Tensor:
    """``ΔB = (Σ_i L_i R_i) @ pinv(A)`` as ``Σ_i L_i (R_i pinv(A))``, one Gram of A for all
    terms (a target given as several products needs no concatenated stack)."""
    for left, right in terms:
        _check_chain(left, right)
        if a.ndim != 2 or a.shape[1] != right.shape[1]:
            raise ValueError(f"A {tuple(a.shape)} does not match ΔW's {right.shape[1]} columns")
    # X = R·pinv(A) is the minimum-norm least-squares solution of X·A = R, i.e. of
    # Aᵀ·Xᵀ = Rᵀ: an n×r system with q right-hand sides, never an n×r pseudo-inverse.
    pinv = _Pinv(a.T)
    return _total([left @ pinv(right.T).T for left, right in terms])


def solve_a_terms(terms: Terms, b: Tensor) -> Tensor:
    """``ΔA = pinv(B) @ (Σ_i L_i R_i)`` as ``Σ_i (pinv(B) L_i) R_i``, one Gram of B."""
    for left, right in terms:
        _check_chain(left, right)
        if b.ndim != 2 or b.shape[0] != left.shape[0]:
            raise ValueError(f"B {tuple(b.shape)} does not match ΔW's {left.shape[0]} rows")
    pinv = _Pinv(b)
    return _total([pinv(left) @ right for left, right in terms])


def solve_b_update(left: Tensor, right: Tensor, a: Tensor) -> Tensor:
    """``ΔB = (L @ R) @ pinv(A)``, evaluated as ``L @ (R @ pinv(A))``.

    Parameters
    ----------
    left, right : (m, q) and (q, n) tensors, the target ``ΔW = left @ right``
    a : (r, n) tensor, the fixed A factor

    Returns
    -------
    (m, r) tensor.
    """
    return solve_b_terms([(left, right)], a)


def solve_a_update(left: Tensor, right: Tensor, b: Tensor) -> Tensor:
    """``ΔA = pinv(B) @ (L @ R)``, evaluated as ``(pinv(B) @ L) @ R``.

    Parameters
    ----------
    left, right : (m, q) and (q, n) tensors, the target ``ΔW = left @ right``
    b : (m, r) tensor, the fixed B factor

    Returns
    -------
    (r, n) tensor.
    """
    return solve_a_terms([(left, right)], b)
