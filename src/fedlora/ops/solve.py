"""Least-squares updates of one LoRA factor toward a target given in factored form.

The target update is ``ΔW = L @ R`` with thin L (m×q) and R (q×n); it is never formed.
For a fixed ``A`` (r×n) the best ``ΔB`` in Frobenius norm, ``argmin ||ΔB·A − ΔW||``, is
``ΔW·pinv(A)``; for a fixed ``B`` (m×r), ``argmin ||B·ΔA − ΔW||`` is ``pinv(B)·ΔW``
(minimum-norm solutions when A or B is rank-deficient). Both are evaluated so that every
intermediate is thin: ``L·(R·pinv(A))`` and ``(pinv(B)·L)·R``. Cost O((m+n)·q·r + (m+n)r²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedlora.ops.scratch import Scratch
from fedlora.ops.sparse import Sparse

Tensor = torch.Tensor


def _check_chain(left: Tensor, right: Tensor) -> None:
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")


class Pinv:
    """``pinv(M) @ rhs`` for a tall thin ``M`` (k×r, k >= r) and any number of right-hand
    sides, from one eigendecomposition of the r×r Gram matrix: ``pinv(M) = V diag(1/λ) Vᵀ Mᵀ``
    over eigenvalues above the same relative cutoff as ``torch.linalg.pinv`` (on singular
    values, ``λ = σ²``), but never below the float64 Gram's own rounding (``k·eps₆₄·λ_max``):
    a direction whose λ is that small is indistinguishable from a null direction, and
    inverting it would blow the solution up. For float32 matrices (the server's) the first
    bound is the larger; it matters for exactly rank-deficient float64 matrices. Costs
    O(k·r²) once and O(k·r·q) per right-hand side of q columns; the k×r pseudo-inverse is
    never built.

    ``ridge > 0`` makes it the Tikhonov-regularised solve ``(MᵀM + μI)⁻¹Mᵀ`` with
    ``μ = ridge·λ_max``: each kept direction's gain ``σ/(σ² + μ)`` is at most
    ``1/(2√μ)``, so an ill-conditioned ``M`` can no longer amplify the right-hand side by
    ``1/σ_min`` (``ridge = 0``: the plain pseudo-inverse). :func:`pinvs` builds many at once."""

    matrix: Tensor
    gram: Tensor
    """``MᵀM`` in float64."""
    vec: Tensor
    """Its eigenvectors."""
    inv: Tensor
    """The weights of the kept eigenvalues (``1/λ``, or ``1/(λ + μ)``), 0 for the others."""
    condition: float
    """``σ_max / σ_min`` over the kept directions (1 when none is kept)."""

    def __init__(self, matrix: Tensor, ridge: float = 0.0) -> None:
        (built,) = pinvs([matrix], ridge)
        self.matrix, self.gram, self.vec, self.inv = built.matrix, built.gram, built.vec, built.inv
        self.condition = built.condition

    @classmethod
    def _assembled(
        cls, matrix: Tensor, gram: Tensor, vec: Tensor, inv: Tensor, condition: float
    ) -> Pinv:
        built = cls.__new__(cls)
        built.matrix, built.gram, built.vec, built.inv = matrix, gram, vec, inv
        built.condition = condition
        return built

    def gram_pinv(self) -> Tensor:
        """The r×r pseudo-inverse of the Gram matrix, ``(MᵀM)⁺`` (float64)."""
        inverse: Tensor = (self.vec * self.inv) @ self.vec.T
        return inverse

    def __call__(self, rhs: Tensor) -> Tensor:
        projected = (self.matrix.T @ rhs).double()
        # Tensor arithmetic operators are typed loosely (Any) in torch's stubs.
        solution: Tensor = (self.vec @ (self.inv[:, None] * (self.vec.T @ projected))).to(rhs.dtype)
        return solution


def _gram(matrix: Tensor) -> Tensor:
    # The r×r algebra runs in float64: squaring σ into λ would otherwise cost float32 half
    # its digits.
    wide = matrix.double()
    gram: Tensor = wide.T @ wide
    return gram


def _spectral_inverse(
    lam: Tensor, rows: Tensor, dtype: torch.dtype, ridge: float
) -> tuple[Tensor, Tensor]:
    """Batched over the leading dimension: the weights ``1/λ`` (or ``1/(λ + μ)``) of the
    kept eigenvalues, 0 for the others, and each matrix's condition number over the kept
    directions (1 where none is kept); ``rows``: each matrix's k, ``dtype``: its own."""
    top = lam.amax(-1, keepdim=True).clamp(min=0)
    rtol = rows[:, None] * torch.finfo(dtype).eps
    noise = rows[:, None] * torch.finfo(torch.float64).eps
    keep = (lam > torch.maximum(rtol**2, noise) * top) & (top > 0)
    shifted = torch.where(keep, lam + ridge * top, torch.ones_like(lam))
    inv = torch.where(keep, 1.0 / shifted, torch.zeros_like(lam))
    kept_max = torch.where(keep, lam, torch.zeros_like(lam)).amax(-1)
    kept_min = torch.where(keep, lam, torch.full_like(lam, math.inf)).amin(-1)
    condition = torch.where(keep.any(-1), (kept_max / kept_min).sqrt(), torch.ones_like(kept_max))
    return inv, condition


def pinvs(matrices: Sequence[Tensor], ridge: float = 0.0) -> list[Pinv]:
    """:class:`Pinv` of each matrix, the eigendecompositions of Grams of one size, dtype and
    device done as one batched call (a server step builds one per layer: a Llama-style
    model's 196 adapted layers all have r×r Grams, and one call on a stacked batch replaces
    196 small ones, on the CPU and on a GPU alike); peak extra memory: the batch's Grams and
    eigenvectors, three r×r float64 matrices per layer."""
    grams = [_gram(m) for m in matrices]
    groups: dict[tuple[int, torch.dtype, torch.device], list[int]] = {}
    for i, m in enumerate(matrices):
        groups.setdefault((m.shape[1], m.dtype, m.device), []).append(i)
    built: list[Pinv | None] = [None] * len(matrices)
    for (_, dtype, device), members in groups.items():
        lam, vec = torch.linalg.eigh(torch.stack([grams[i] for i in members]))
        rows = torch.tensor([max(matrices[i].shape) for i in members], dtype=torch.float64)
        inv, condition = _spectral_inverse(lam, rows.to(device), dtype, ridge)
        for j, (i, cond) in enumerate(zip(members, condition.tolist(), strict=True)):
            built[i] = Pinv._assembled(matrices[i], grams[i], vec[j], inv[j], cond)
    return [b for b in built if b is not None]


Terms = Sequence[tuple[Tensor, Tensor]]


def _total(parts: list[Tensor]) -> Tensor:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def condition(matrix: Tensor) -> float:
    """``σ_max / σ_min`` of ``matrix`` over the directions a solve against it inverts (the
    gain of the worst-conditioned direction, relative to the best)."""
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    return Pinv(tall).condition


def solve_b_terms(
    terms: Terms, a: Tensor, ridge: float = 0.0, *, pinv: Pinv | None = None
) -> Tensor:
    """``ΔB = (Σ_i L_i R_i) @ pinv(A)`` as ``Σ_i L_i (R_i pinv(A))``, one Gram of A for all
    terms (a target given as several products needs no concatenated stack); ``ridge``: the
    Tikhonov solve of :class:`Pinv` (``pinv``: one built already, ``Pinv(A.T, ridge)``)."""
    for left, right in terms:
        _check_chain(left, right)
        if a.ndim != 2 or a.shape[1] != right.shape[1]:
            raise ValueError(f"A {tuple(a.shape)} does not match ΔW's {right.shape[1]} columns")
    # X = R·pinv(A) is the minimum-norm least-squares solution of X·A = R, i.e. of
    # Aᵀ·Xᵀ = Rᵀ: an n×r system with q right-hand sides, never an n×r pseudo-inverse.
    pinv = Pinv(a.T, ridge) if pinv is None else pinv
    return _total([left @ pinv(right.T).T for left, right in terms])


def solve_a_terms(
    terms: Terms, b: Tensor, ridge: float = 0.0, *, pinv: Pinv | None = None
) -> Tensor:
    """``ΔA = pinv(B) @ (Σ_i L_i R_i)`` as ``Σ_i (pinv(B) L_i) R_i``, one Gram of B
    (``pinv``: one built already, ``Pinv(B, ridge)``)."""
    for left, right in terms:
        _check_chain(left, right)
        if b.ndim != 2 or b.shape[0] != left.shape[0]:
            raise ValueError(f"B {tuple(b.shape)} does not match ΔW's {left.shape[0]} rows")
    pinv = Pinv(b, ridge) if pinv is None else pinv
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


# -- FedSRD-e's step on the clients' factors, without stacking them ---------------------------

Delta = Tensor | Sparse
"""A client's factor delta as uploaded: dense, or sparse (its positions and values)."""

ClientDeltas = Sequence[tuple[float, Delta, Delta]]
"""``(p_k, ΔA_k, ΔB_k)`` per client: weight, r×n delta of A, m×r delta of B."""


def fixed(factor: str, a: Tensor, b: Tensor, ridge: float = 0.0) -> Pinv:
    """The pseudo-inverse a ``factor``-round solves with: of ``Aᵀ`` when ``B`` is updated,
    of ``B`` when ``A`` is; built once per layer for the step and its condition number."""
    (built,) = fixed_all(factor, [(a, b)], ridge)
    return built


def fixed_all(
    factor: str, pairs: Sequence[tuple[Tensor, Tensor]], ridge: float = 0.0
) -> list[Pinv]:
    """:func:`fixed` of every layer's ``(A, B)``, their eigendecompositions batched
    (:func:`pinvs`)."""
    return pinvs([a.T if factor == "B" else b for a, b in pairs], ridge)


def _as_dense(delta: Delta, like: Tensor) -> Tensor:
    d = delta.to_dense() if isinstance(delta, Sparse) else delta
    if tuple(d.shape) != tuple(like.shape):
        raise ValueError(f"delta of shape {tuple(d.shape)} does not fit {tuple(like.shape)}")
    return d.to(like.dtype)


def _fits(block: Delta, like: Tensor) -> None:
    if tuple(block.shape) != tuple(like.shape):
        raise ValueError(f"delta of shape {tuple(block.shape)} does not fit {tuple(like.shape)}")


def _dense_block(delta: Delta, like: Tensor, scratch: Scratch | None) -> Tensor:
    """``delta`` as a dense matrix shaped like ``like``, in its dtype and on its device: a
    dense delta as it is, a sparse one scattered into a zeroed buffer (from ``scratch``, valid
    until its next request of this shape, else a new one). A reused buffer of one client's
    delta stays in the cache for the product that reads it, where a stack of every client's
    would go through main memory three times (zeroed, scattered into, read)."""
    _fits(delta, like)
    if not isinstance(delta, Sparse):
        return delta.to(like.device, like.dtype)
    if scratch is None:
        out = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    else:
        out = scratch.zeros(tuple(like.shape), like.dtype, like.device)
    at, values = delta.indices.to(like.device), delta.values.to(like.device, like.dtype)
    out.view(-1).index_put_((at,), values)
    return out


def _weights(clients: ClientDeltas) -> Tensor:
    return torch.tensor([p for p, _, _ in clients], dtype=torch.float64)[:, None, None]


def solve_b_clients(
    a: Tensor,
    b: Tensor,
    clients: ClientDeltas,
    ridge: float = 0.0,
    *,
    pinv: Pinv | None = None,
    scratch: Scratch | None = None,
) -> Tensor:
    """``ΔB = (Σ_k p_k (B + ΔB_k)(A + ΔA_k) − B·A)·pinv(A)`` from r×r products per client.

    With ``G = A·Aᵀ``, ``Y_k = ΔA_k·Aᵀ`` and ``pinv(A) = Aᵀ·G⁺`` the target is
    ``(B·C_0 + Σ_k ΔB_k·C_k)·G⁺`` with ``C_0 = Σ_k p_k (G + Y_k) − G`` and
    ``C_k = p_k (G + Y_k)``: every m- or n-sized product has r columns and ``B·A`` cancels
    in the r×r algebra (float64) instead of in m×r float32 sums. Each delta is read once,
    densified in a buffer that its product reads straight away: first every ``Y_k``, then
    the update ``B·C_0G⁺ + Σ_k ΔB_k·C_kG⁺`` accumulated in place. Equal to
    ``solve_b_terms`` on the stacked aggregate up to float error (``ridge`` as there: ``G⁺``
    becomes ``(G + μI)⁻¹``; ``pinv``: :func:`fixed` built already; ``scratch``: where the
    dense deltas are built).
    """
    pinv = Pinv(a.T, ridge) if pinv is None else pinv
    g, g_plus = pinv.gram, pinv.gram_pinv()
    a_t = a.T
    y = torch.stack([_dense_block(d_a, a, scratch) @ a_t for _, d_a, _ in clients]).double()
    c = _weights(clients) * (g + y)
    coeff = (torch.cat([(c.sum(0) - g)[None], c]) @ g_plus).to(b.dtype)
    update = b @ coeff[0]
    for k, (_, _, d_b) in enumerate(clients, start=1):
        update.addmm_(_dense_block(d_b, b, scratch), coeff[k])
    return update


def solve_a_clients(
    a: Tensor,
    b: Tensor,
    clients: ClientDeltas,
    ridge: float = 0.0,
    *,
    pinv: Pinv | None = None,
    scratch: Scratch | None = None,
) -> Tensor:
    """``ΔA = pinv(B)·(Σ_k p_k (B + ΔB_k)(A + ΔA_k) − B·A)`` from r×r products per client.

    With ``H = Bᵀ·B``, ``Z_k = Bᵀ·ΔB_k`` and ``pinv(B) = H⁺·Bᵀ``:
    ``H⁺·(D_0·A + Σ_k D_k·ΔA_k)``, ``D_0 = Σ_k p_k (H + Z_k) − H``, ``D_k = p_k (H + Z_k)``:
    every ``Z_k`` first, then the update ``H⁺D_0·A + Σ_k H⁺D_k·ΔA_k`` accumulated in place
    (see :func:`solve_b_clients`, also for ``scratch``).
    """
    pinv = Pinv(b, ridge) if pinv is None else pinv
    h, h_plus = pinv.gram, pinv.gram_pinv()
    b_t = b.T
    z = torch.stack([b_t @ _dense_block(d_b, b, scratch) for _, _, d_b in clients]).double()
    d = _weights(clients) * (h + z)
    coeff = (h_plus @ torch.cat([(d.sum(0) - h)[None], d])).to(a.dtype)
    update = coeff[0] @ a
    for k, (_, d_a, _) in enumerate(clients, start=1):
        update.addmm_(coeff[k], _dense_block(d_a, a, scratch))
    return update


def projected_change(a: Tensor, b: Tensor, d_a: Delta, d_b: Delta, factor: str) -> Tensor:
    """One client's reconstruction change seen through the fixed factor: what a sum over
    clients needs for FedSRD-e's step, so that each client can send its own term.

    With ``B_k = B + ΔB_k`` and ``A_k = A + ΔA_k``, a B-round (``factor == "B"``) returns
    ``(B_k A_k − B A)·Aᵀ = ΔB_k·(G + Y_k) + B·Y_k`` (m×r; ``G = A·Aᵀ``, ``Y_k = ΔA_k·Aᵀ``),
    an A-round ``Bᵀ·(B_k A_k − B A) = (H + Z_k)·ΔA_k + Z_k·A`` (r×n; ``H = Bᵀ·B``,
    ``Z_k = Bᵀ·ΔB_k``). ``B·A`` never enters, so the term is as small as the client's change
    (what a fixed-point secure sum needs); the r×r Grams are formed in float64."""
    if factor == "B":
        y = (_as_dense(d_a, a).double() @ a.double().T).to(b.dtype)
        g = (a.double() @ a.double().T).to(b.dtype)
        return _as_dense(d_b, b) @ (g + y) + b @ y
    z = (b.double().T @ _as_dense(d_b, b).double()).to(a.dtype)
    h = (b.double().T @ b.double()).to(a.dtype)
    return (h + z) @ _as_dense(d_a, a) + z @ a


def solve_projected(
    projected: Tensor,
    a: Tensor,
    b: Tensor,
    factor: str,
    ridge: float = 0.0,
    *,
    pinv: Pinv | None = None,
) -> Tensor:
    """FedSRD-e's update from the weighted sum of :func:`projected_change` over clients
    (weights summing to one, as the server's do):
    ``ΔB = P·(A·Aᵀ)⁺`` (B-round) or ``ΔA = (Bᵀ·B)⁺·P`` (A-round), the pseudo-inverse (or,
    with ``ridge``, the Tikhonov solve) of :class:`Pinv`; equal to :func:`solve_b_clients`
    / :func:`solve_a_clients` on the same deltas up to float error."""
    pinv = fixed(factor, a, b, ridge) if pinv is None else pinv
    if factor == "B":
        return (projected.double() @ pinv.gram_pinv()).to(b.dtype)
    return (pinv.gram_pinv() @ projected.double()).to(a.dtype)
