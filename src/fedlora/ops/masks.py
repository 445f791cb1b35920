"""Sparsification masks: score quantile, magnitude, DARE random; and the pruning rescale.

Quantile definition used throughout (linear interpolation between order statistics, the
same number as ``torch.quantile(x, rho)``'s default and the FedSRD authors' code): for ``N``
scores sorted ascending ``x_(0) <= … <= x_(N-1)`` and ``h = rho·(N−1)``, the rho-quantile is
``q = x_(⌊h⌋) + (h − ⌊h⌋)·(x_(⌊h⌋+1) − x_(⌊h⌋))``. A quantile mask keeps every element whose
score is strictly above ``q`` (FedSRD's rule), so about ``(1 − rho)·N`` elements survive.
``q`` is found with ``torch.kthvalue``, which (unlike ``torch.quantile``) accepts tensors of
any size, including the > 2^24-element matrices of large layers.

Edge cases, decided here once for every caller:

- ``rho = 0`` keeps everything (no sparsification), as the authors' code skips pruning.
- At least one element survives: ``rho`` is capped at ``(N−1)/N``, and when ties at the top
  leave nothing strictly above ``q`` the tied maximum elements are kept.

DARE (Yu et al., 2024, "Language Models are Super Mario") drops each element independently
with probability ``p`` and scales survivors by ``1 / (1 − p)``, which keeps the expectation.
Its positions come from :func:`fedlora.ops.prng.seeded_keep_mask`, so a receiver can
regenerate them from the seed alone.
"""

from __future__ import annotations

import math

import torch

from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.sparse import Sparse

Tensor = torch.Tensor

RESCALE_MIN_KEPT = 1e-9
"""Pruned deltas whose ``Σ|kept|`` is at most this are not rescaled (the FedSRD authors'
guard against dividing by a vanishing sum)."""


def _check_ratio(rho: float, name: str = "rho", upper_inclusive: bool = False) -> None:
    ok = 0.0 <= rho <= 1.0 if upper_inclusive else 0.0 <= rho < 1.0
    if not ok:
        bound = "]" if upper_inclusive else ")"
        raise ValueError(f"{name} must be in [0, 1{bound}, got {rho}")


def capped_ratio(rho: float, numel: int) -> float:
    """``rho`` capped at ``(N−1)/N`` so that a quantile mask of ``N`` scores keeps one."""
    _check_ratio(rho, upper_inclusive=True)
    if numel < 1:
        raise ValueError("a ratio of an empty tensor is undefined")
    return min(rho, (numel - 1) / numel)


def quantile_threshold(scores: Tensor, rho: float) -> Tensor:
    """The linearly interpolated rho-quantile of the flattened ``scores``.

    Parameters
    ----------
    scores : tensor of finite values, any shape and size
    rho : float in [0, 1]

    Returns
    -------
    0-d tensor in ``scores``' dtype (``torch.quantile(scores, rho)`` where that accepts the
    input, up to the rounding of the interpolation).
    """
    _check_ratio(rho, upper_inclusive=True)
    flat = scores.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor is undefined")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores must be finite")
    h = rho * (n - 1)
    lo = min(math.floor(h), n - 1)
    frac = h - lo
    below = torch.kthvalue(flat, lo + 1).values  # kthvalue counts from 1
    if frac == 0.0:
        return below
    above = torch.kthvalue(flat, lo + 2).values
    return torch.lerp(below, above, torch.tensor(frac, dtype=flat.dtype))


def quantile_mask(scores: Tensor, rho: float) -> Tensor:
    """Keep elements whose score is strictly above the rho-quantile (see module docstring).

    ``rho`` in [0, 1] is capped with :func:`capped_ratio`; ``rho = 0`` keeps everything; at
    least one element is always kept.

    Returns
    -------
    bool tensor of ``scores``' shape.
    """
    _check_ratio(rho, upper_inclusive=True)
    if rho == 0.0:
        if scores.numel() and not bool(torch.isfinite(scores).all()):
            raise ValueError("scores must be finite")
        return torch.ones_like(scores, dtype=torch.bool)
    mask = scores > quantile_threshold(scores, capped_ratio(rho, scores.numel()))
    if not bool(mask.any()):
        mask = scores == scores.max()
    return mask


def magnitude_mask(values: Tensor, rho: float) -> Tensor:
    """Quantile mask on ``|values|``: drop (about) the fraction ``rho`` of smallest magnitudes."""
    return quantile_mask(values.abs(), rho)


def dare_mask(seed: int, shape: tuple[int, ...], drop: float) -> Tensor:
    """DARE's random mask: each element kept independently with probability ``1 − drop``.

    Portable (SplitMix64): the same ``(seed, shape, drop)`` gives the same mask everywhere.
    """
    _check_ratio(drop, "drop")
    numel = math.prod(shape)
    return seeded_keep_mask(seed, numel, 1.0 - drop).reshape(shape)


def dare(delta: Tensor, drop: float, seed: int) -> Sparse:
    """Drop-and-rescale ``delta``: survivors of :func:`dare_mask` scaled by ``1 / (1 − drop)``.

    The result carries ``mask_seed`` so the wire may send the seed instead of the positions.
    Unbiased: ``E[dare(delta).to_dense()] = delta`` over seeds.
    """
    _check_ratio(drop, "drop")
    keep = 1.0 - drop
    return Sparse.from_seeded_mask(delta / keep, seed, keep)


def dare_dense(delta: Tensor, drop: float, seed: int) -> Tensor:
    """``dare(delta, drop, seed).to_dense()``, bit for bit, without the sparse detour (for a
    caller that applies the delta and keeps it dense); ``delta`` is left as it was."""
    return dare_dense_(delta.clone(), drop, seed)


def dare_dense_(delta: Tensor, drop: float, seed: int) -> Tensor:
    """:func:`dare_dense` written into ``delta`` itself (returned): for a caller that owns the
    delta and drops it afterwards, it saves two tensors of its size."""
    _check_ratio(drop, "drop")
    if drop == 0.0:
        return delta
    dropped = dare_mask(seed, tuple(delta.shape), drop).logical_not_().to(delta.device)
    return delta.div_(1.0 - drop).masked_fill_(dropped, 0.0)


def rescale_pruned(original: Tensor, pruned: Tensor) -> Tensor:
    """Scale ``pruned`` by ``Σ|original| / Σ|pruned|`` so the total magnitude is preserved.

    The sums are taken in float64. When ``Σ|pruned| <=`` :data:`RESCALE_MIN_KEPT` (nothing,
    or next to nothing, survived) ``pruned`` is returned unscaled, as the authors' code does.
    """
    kept = float(pruned.abs().sum(dtype=torch.float64))
    if kept <= RESCALE_MIN_KEPT:
        return pruned.clone()
    total = float(original.abs().sum(dtype=torch.float64))
    return pruned * (total / kept)
