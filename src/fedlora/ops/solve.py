"""Least-squares updates of one LoRA factor toward a target given in factored form.

The target update is ``ΔW = L @ R`` with thin L (m×q) and R (q×n); it is never formed.
For a fixed ``A`` (r×n) the best ``ΔB`` in Frobenius norm, ``argmin ||ΔB·A − ΔW||``, is
``ΔW·pinv(A)``; for a fixed ``B`` (m×r), ``argmin ||B·ΔA − ΔW||`` is ``pinv(B)·ΔW``
(minimum-norm solutions when A or B is rank-deficient). Both are evaluated so that every
intermediate is thin: ``L·(R·pinv(A))`` and ``(pinv(B)·L)·R``. Cost O((m+n)·q·r + (m+n)r²).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_chain(left: Tensor, right: Tensor) -> None:
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")


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
    _check_chain(left, right)
    if a.ndim != 2 or a.shape[1] != right.shape[1]:
        raise ValueError(f"A {tuple(a.shape)} does not match ΔW's {right.shape[1]} columns")
    return left @ (right @ torch.linalg.pinv(a))


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
    _check_chain(left, right)
    if b.ndim != 2 or b.shape[0] != left.shape[0]:
        raise ValueError(f"B {tuple(b.shape)} does not match ΔW's {left.shape[0]} rows")
    return (torch.linalg.pinv(b) @ left) @ right
