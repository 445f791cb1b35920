"""FedSRD's Sparsify stage for one LoRA layer, with its ablation variants.

Given the factors a client started from ``(A_old, B_old)`` and trained to ``(A_new, B_new)``,
the deltas ``ΔA = A_new − A_old`` and ``ΔB = B_new − B_old`` are sparsified matrix by matrix:

1. Ratio: ``rho = base + min(upper, coeff·ln(max(kurt(I), 1)))`` from the Pearson kurtosis of
   the importance scores ``I`` (``ops.importance``: ``I_B`` with the OLD ``A``, ``I_A`` with
   the NEW ``B``), or a fixed ``rho``; capped so that one element survives
   (``ops.masks.capped_ratio``).
2. Selection (``sparsifier``): ``importance`` keeps scores strictly above their
   rho-quantile (FedSRD); ``magnitude`` does the same on ``|Δ|``; ``random`` keeps each
   element with probability ``1 − rho`` under a portable seeded mask (so the wire sends the
   seed, not the positions). All three use the ratio of step 1, computed from the importance
   scores, so an ablation changes which elements are kept, not how many.
3. Optional rescale by ``Σ|Δ| / Σ|Δ_kept|`` (``ops.masks.rescale_pruned``).

Pure tensor maths; the caller decides which factors it sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedlora.ops.importance import adaptive_sparsity, importance_a, importance_b
from fedlora.ops.masks import capped_ratio, magnitude_mask, quantile_mask, rescale_pruned
from fedlora.ops.seeds import label_seed
from fedlora.ops.sparse import Sparse

Tensor = torch.Tensor

SPARSIFIERS = ("importance", "magnitude", "random")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RatioRule:
    """FedSRD's per-matrix sparsity ratio and what is done to the kept values: one type for
    FedSRD, FedSRD-e and the uplink plug-in, validated here once.

    ``rho = base + min(upper, coeff·ln(max(kurt, 1)))`` (capped so one element per matrix
    survives), or ``fixed_rho``; ``rescale`` multiplies the kept values by ``Σ|Δ| / Σ|Δ_kept|``.
    """

    base: float = 0.85
    coeff: float = 0.1
    upper: float = 0.11
    fixed_rho: float | None = None
    rescale: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= _number("base", self.base) < 1.0:
            raise ValueError(f"base must be in [0, 1), got {self.base}")
        for name in ("coeff", "upper"):
            if not 0.0 <= _number(name, getattr(self, name)) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if self.fixed_rho is not None and not 0.0 <= _number("fixed_rho", self.fixed_rho) <= 1.0:
            raise ValueError(f"fixed_rho must be in [0, 1], got {self.fixed_rho}")
        if not isinstance(self.rescale, bool):
            raise ValueError(f"rescale must be true or false, got {self.rescale!r}")

    def ratio(self, scores: Tensor) -> float:
        """The capped ratio for one matrix of ``scores``."""
        if self.fixed_rho is not None:
            rho = self.fixed_rho
        else:
            rho = min(1.0, adaptive_sparsity(scores, self.base, self.coeff, self.upper))
        return capped_ratio(rho, scores.numel())


@dataclass(frozen=True)
class SparseDelta:
    """One sparsified factor delta and the ratio that produced it."""

    delta: Sparse
    rho: float


def select(
    delta: Tensor, scores: Tensor, rho: float, sparsifier: str, rescale: bool, seed: int
) -> Sparse:
    """Keep part of ``delta`` by ``sparsifier`` at ratio ``rho`` (see module docstring).

    Exact zeros among kept values are left out for the score-based sparsifiers (adding them
    back changes nothing); a random mask keeps its positions, so that its seed describes them.
    """
    if sparsifier == "random":
        keep = 1.0 - rho
        mask = Sparse.from_seeded_mask(delta, seed, keep)
        values = mask.values
        if rescale:
            values = rescale_pruned(delta, mask.to_dense()).reshape(-1)[mask.indices]
        return Sparse(mask.shape, mask.indices, values.clone(), seed, keep)
    if sparsifier == "importance":
        kept = quantile_mask(scores, rho)
    elif sparsifier == "magnitude":
        kept = magnitude_mask(delta, rho)
    else:
        raise ValueError(f"sparsifier must be one of {', '.join(SPARSIFIERS)}, got {sparsifier!r}")
    pruned = torch.where(kept, delta, torch.zeros_like(delta))
    if rescale:
        pruned = rescale_pruned(delta, pruned)
    return Sparse.from_mask(pruned, pruned != 0)


def delta_scores(part: str, delta: Tensor, a_old: Tensor, b_new: Tensor) -> Tensor:
    """FedSRD's importance of a factor delta: ``I_A`` with the NEW ``B`` for ``part == "A"``,
    ``I_B`` with the OLD ``A`` for ``part == "B"``."""
    return importance_a(delta, b_new) if part == "A" else importance_b(delta, a_old)


def sparsify_layer(
    old: tuple[Tensor, Tensor],
    new: tuple[Tensor, Tensor],
    rule: RatioRule,
    sparsifier: str,
    rescale: bool,
    seed: int,
) -> tuple[SparseDelta, SparseDelta]:
    """Sparsified ``(ΔA, ΔB)`` of one layer from ``old = (A_old, B_old)`` and
    ``new = (A_new, B_new)``; ``seed`` drives the random sparsifier only."""
    (a_old, b_old), (a_new, b_new) = old, new
    d_a, d_b = a_new - a_old, b_new - b_old
    out = []
    for part, delta in (("A", d_a), ("B", d_b)):
        scores = delta_scores(part, delta, a_old, b_new)
        rho = rule.ratio(scores)
        sparse = select(delta, scores, rho, sparsifier, rescale, label_seed(seed, "uplink", part))
        out.append(SparseDelta(sparse, rho))
    return out[0], out[1]


def ratio_summary(ratios: list[float]) -> dict[str, float]:
    """``{"mean", "min", "max"}`` of per-matrix ratios (for run metrics)."""
    if not ratios:
        return {}
    low, high = min(ratios), max(ratios)
    # math.fsum, and the clamp: a plain sum of equal ratios can round past them.
    mean = min(max(math.fsum(ratios) / len(ratios), low), high)
    return {"mean": mean, "min": low, "max": high}
