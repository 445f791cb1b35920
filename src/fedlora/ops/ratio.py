"""FedSRD's per-matrix sparsity ratio rule and the names of the sparsifiers and supports.

Kept apart from :mod:`fedlora.ops.sparsify` so that a run's config can be read and checked
without importing torch (the rule's maths import it when a ratio is first computed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedlora.validate import flag, number

if TYPE_CHECKING:
    import torch

SPARSIFIERS = ("importance", "magnitude", "random")
"""Which elements of a factor delta are kept (:func:`fedlora.ops.sparsify.select`)."""

SUPPORTS = ("global", "per-rank")
"""Where the kept share is counted: the whole matrix, or each rank slot."""


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
        number("base", self.base, at_least=0.0, below=1.0)
        for name in ("coeff", "upper"):
            number(name, getattr(self, name), at_least=0.0, below=math.inf)
        if self.fixed_rho is not None:
            number("fixed_rho", self.fixed_rho, at_least=0.0, at_most=1.0)
        flag("rescale", self.rescale)

    def ratio(self, scores: torch.Tensor) -> float:
        """The capped ratio for one matrix of ``scores``."""
        from fedlora.ops.importance import adaptive_sparsity
        from fedlora.ops.masks import capped_ratio

        if self.fixed_rho is not None:
            rho = self.fixed_rho
        else:
            rho = min(1.0, adaptive_sparsity(scores, self.base, self.coeff, self.upper))
        return capped_ratio(rho, scores.numel())
