"""Sparsification masks: score quantile, magnitude, DARE random; and the pruning rescale.

Quantile definition used throughout (the "lower" order statistic, the same number as
``torch.quantile(x, rho, interpolation="lower")``): for ``N`` scores sorted ascending
``x_(0) <= … <= x_(N-1)``, the rho-quantile is ``q = x_(j)`` with ``j = floor(rho·(N−1))``.
A quantile mask keeps every element whose score is ``>= q``. Ties at ``q`` are all kept, so
at least ``N − j`` elements survive (exactly that many when scores are distinct); ``rho = 0``
keeps everything. ``q`` is found with ``torch.kthvalue``, which (unlike ``torch.quantile``)
accepts tensors of any size, including the > 2^24-element matrices of large layers.

DARE (Yu et al., 2024, "Language Models are Super Mario") drops each element independently
with probability ``p`` and scales survivors by ``1 / (1 − p)``, which keeps the expectation.
Its positions come from :func:`fedlora.ops.prng.seeded_keep_mask`, so a receiver can
regenerate them from the seed alone.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.sparse import Sparse

Tensor = torch.Tensor


def _check_ratio(rho: float, name: str = "rho") -> None:
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rho}")


def quantile_threshold(scores: Tensor, rho: float) -> Tensor:
    """The lower rho-quantile ``x_(floor(rho·(N−1)))`` of the flattened ``scores``.

    Parameters
    ----------
    scores : tensor of finite values, any shape and size
    rho : float in [0, 1)

    Returns
    -------
    0-d tensor in ``scores``' dtype.
    """
    _check_ratio(rho)
    flat = scores.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor is undefined")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores must be finite")
    k = math.floor(rho * (n - 1)) + 1  # kthvalue counts from 1
    return torch.kthvalue(flat, k).values


def quantile_mask(scores: Tensor, rho: float) -> Tensor:
    """Keep elements whose score is ``>=`` the lower rho-quantile (ties kept).

    Returns
    -------
    bool tensor of ``scores``' shape.
    """
    return scores >= quantile_threshold(scores, rho)


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


def rescale_pruned(original: Tensor, pruned: Tensor) -> Tensor:
    """Scale ``pruned`` by ``Σ|original| / Σ|pruned|`` so the total magnitude is preserved.

    The sums are taken in float64. If nothing survived (``Σ|pruned| = 0``) the zeros are
    returned unchanged.
    """
    kept = float(pruned.abs().sum(dtype=torch.float64))
    if kept == 0.0:
        return pruned.clone()
    total = float(original.abs().sum(dtype=torch.float64))
    return pruned * (total / kept)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. run seed, round, layer name).

    Defined by BLAKE2b over the parts' decimal/text forms, so it is the same on every
    platform and Python version (unlike ``hash``), and independent seeds come out for
    different parts.
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
