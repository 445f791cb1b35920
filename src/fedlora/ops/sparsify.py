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

from fedlora.ops.importance import importance_a, importance_b
from fedlora.ops.masks import quantile_mask, rescale_pruned
from fedlora.ops.ratio import SPARSIFIERS, RatioRule
from fedlora.ops.seeds import label_seed
from fedlora.ops.sparse import Sparse
from fedlora.validate import one_of

Tensor = torch.Tensor


@dataclass(frozen=True)
class SparseDelta:
    """One sparsified factor delta and the ratio that produced it."""

    delta: Sparse
    rho: float


def rank_slot_dim(part: str) -> int:
    """The dimension of a factor delta that indexes its rank slots: ``ΔB``'s columns (m×r),
    ``ΔA``'s rows (r×n)."""
    return 1 if part == "B" else 0


def per_slot_mask(scores: Tensor, rho: float, slot_dim: int) -> Tensor:
    """:func:`quantile_mask` applied within each rank slot (each slice along ``slot_dim``):
    every slot keeps its own top share, so the kept support spans every rank direction."""
    slots = scores.movedim(slot_dim, 0)
    return torch.stack([quantile_mask(slot, rho) for slot in slots]).movedim(0, slot_dim)


def select(
    delta: Tensor,
    scores: Tensor,
    rho: float,
    sparsifier: str,
    rescale: bool,
    seed: int,
    slot_dim: int | None = None,
) -> Sparse:
    """Keep part of ``delta`` by ``sparsifier`` at ratio ``rho`` (see module docstring);
    with ``slot_dim`` the score-based sparsifiers keep the share ``1 − rho`` within each rank
    slot (:func:`per_slot_mask`) instead of over the whole matrix.

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
    one_of("sparsifier", sparsifier, SPARSIFIERS)
    ranked = scores if sparsifier == "importance" else delta.abs()
    kept = quantile_mask(ranked, rho) if slot_dim is None else per_slot_mask(ranked, rho, slot_dim)
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
    support: str = "global",
) -> tuple[SparseDelta, SparseDelta]:
    """Sparsified ``(ΔA, ΔB)`` of one layer from ``old = (A_old, B_old)`` and
    ``new = (A_new, B_new)``; ``seed`` drives the random sparsifier only; ``support``
    ("global" | "per-rank") chooses where the kept share is counted (:func:`select`)."""
    (a_old, b_old), (a_new, b_new) = old, new
    d_a, d_b = a_new - a_old, b_new - b_old
    out = []
    for part, delta in (("A", d_a), ("B", d_b)):
        scores = delta_scores(part, delta, a_old, b_new)
        rho = rule.ratio(scores)
        slot_dim = rank_slot_dim(part) if support == "per-rank" else None
        mask_seed = label_seed(seed, "uplink", part)
        sparse = select(delta, scores, rho, sparsifier, rescale, mask_seed, slot_dim)
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
