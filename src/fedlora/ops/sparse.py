"""A sparse tensor as the project passes it between methods and the wire."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlora.ops.prng import seeded_keep_mask


@dataclass(frozen=True)
class Sparse:
    """Values at flat positions of a tensor of ``shape``; every other element is zero.

    ``indices`` are int64 flat (row-major) positions, strictly increasing; ``values`` has
    one entry per index. When ``mask_seed`` is set, the positions are exactly
    ``seeded_keep_mask(mask_seed, numel, keep_prob).nonzero()``, so the wire may send the
    seed instead of the positions.
    """

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor
    mask_seed: int | None = None
    keep_prob: float | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=self.values.dtype)
        out[self.indices] = self.values
        return out.reshape(self.shape)

    @staticmethod
    def from_mask(dense: torch.Tensor, mask: torch.Tensor) -> Sparse:
        """Keep ``dense`` where ``mask`` is true."""
        flat_idx = mask.reshape(-1).nonzero().reshape(-1)
        return Sparse(tuple(dense.shape), flat_idx, dense.reshape(-1)[flat_idx].clone())

    @staticmethod
    def from_seeded_mask(dense: torch.Tensor, seed: int, keep_prob: float) -> Sparse:
        """Keep ``dense`` where the portable seeded mask is true (positions regenerable)."""
        mask = seeded_keep_mask(seed, dense.numel(), keep_prob).to(dense.device)
        s = Sparse.from_mask(dense, mask)
        return Sparse(s.shape, s.indices, s.values, mask_seed=seed, keep_prob=keep_prob)
