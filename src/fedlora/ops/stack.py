"""Sums of low-rank products kept as one thin product (stacking), and their compression.

``Σ_k c_k B_k A_k`` with B_k (m×r_k), A_k (r_k×n) equals ``L @ R`` for the horizontal stack
``L = [B_1 … B_K]`` (m×Σr_k) and the vertical stack ``R = [c_1 A_1; …; c_K A_K]``
(Σr_k×n): the FLoRA / FLoRIST stacking identity. Nothing here forms an m×n matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from fedlora.ops.batches import map_layers
from fedlora.ops.factored import factored_svd, numerical_rank

Tensor = torch.Tensor


def stack_products(
    lefts: Sequence[Tensor], rights: Sequence[Tensor], coeffs: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """``(L, R)`` with ``L @ R = Σ_k coeffs[k] · lefts[k] @ rights[k]``.

    Parameters
    ----------
    lefts : K tensors (m, r_k)
    rights : K tensors (r_k, n)
    coeffs : K scalars, folded into the right factors

    Returns
    -------
    L (m, Σ r_k) and R (Σ r_k, n), in the input order and dtype of the first factor.
    """
    if not lefts or not (len(lefts) == len(rights) == len(coeffs)):
        raise ValueError(
            f"need K >= 1 matching factors, got {len(lefts)} / {len(rights)} / {len(coeffs)}"
        )
    for left, right in zip(lefts, rights, strict=True):
        if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
            raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
    dtype = lefts[0].dtype
    left = torch.cat([b.to(dtype) for b in lefts], dim=1)
    right = torch.cat([c * a.to(dtype) for c, a in zip(coeffs, rights, strict=True)], dim=0)
    return left, right


def compress(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """The same product at its numerical rank: ``(U_k diag(S_k), V_kᵀ)``.

    Drops the directions whose singular value is float noise (see
    ``factored.numerical_rank``); the result has at most ``left.shape[1]`` columns and its
    right factor has orthonormal rows.
    """
    return at_numerical_rank(*factored_svd(left, right))


def at_numerical_rank(u: Tensor, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(U_k diag(S_k), V_kᵀ)`` of one thin SVD, ``k`` its numerical rank (new tensors)."""
    k = numerical_rank(s)
    return u[:, :k] * s[:k], v[:, :k].T.contiguous()


def compress_layers(
    stacks: Mapping[str, tuple[Tensor, Tensor]], budget: int | None = None
) -> Iterator[tuple[str, tuple[Tensor, Tensor]]]:
    """:func:`compress` of every layer's ``(L, R)``, the SVDs of the layers of one shape run
    as one batched call on a GPU (:func:`fedlora.ops.batches.map_layers`; ``budget``: its
    bytes per call, 0 one layer at a time)."""
    for name, (u, s, v) in map_layers(factored_svd, stacks, budget):
        yield name, at_numerical_rank(u, s, v)


def fit_rank(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Keep the first ``rank`` directions of ``(A, B)`` (rows of A, columns of B), or
    zero-pad both to ``rank`` when there are fewer. Always returns new tensors."""
    r = a.shape[0]
    if b.shape[1] != r:
        raise ValueError(f"A has {r} rows but B has {b.shape[1]} columns")
    if r >= rank:
        return a[:rank].clone(), b[:, :rank].clone()
    a_out = torch.zeros(rank, a.shape[1], dtype=a.dtype)
    b_out = torch.zeros(b.shape[0], rank, dtype=b.dtype)
    a_out[:r] = a
    b_out[:, :r] = b
    return a_out, b_out
