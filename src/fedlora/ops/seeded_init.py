"""Portable seeded initialisation: the same tensor from the same seed on every platform.

``torch.Generator`` streams are not promised to stay stable across torch releases, so a
tensor that two parties must derive independently (FFA-LoRA's frozen ``A``, which is never
sent, and every fresh LoRA ``A``, which is sent as a :class:`SeededInit`) is drawn from the
SplitMix64 stream of ``fedlora.ops.prng`` instead: 53-bit uniform fractions computed with
integer arithmetic, mapped to floats with exact IEEE operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedlora.ops.prng import splitmix64

Tensor = torch.Tensor

_TWO_POW_53 = float(1 << 53)


def portable_uniform(
    seed: int, shape: tuple[int, ...], low: float, high: float, start: int = 0
) -> Tensor:
    """Float32 tensor of ``shape`` with i.i.d. ``U(low, high)`` entries.

    Element ``i`` (row-major) uses output ``start + i`` of the SplitMix64 stream of ``seed``;
    disjoint ``start`` ranges give independent tensors from one seed.
    """
    if high <= low:
        raise ValueError(f"need low < high, got [{low}, {high})")
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    bits = splitmix64(seed, start, numel) >> np.uint64(11)  # top 53 bits
    frac = bits.astype(np.float64) / _TWO_POW_53  # exact: 53-bit integers fit a double
    values = low + (high - low) * frac
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


LORA_A_RULE = "lora-a-kaiming-uniform"
"""PEFT's default init of a LoRA ``A`` (r×n): kaiming-uniform with ``a = √5``, which is
``U(-1/√n, 1/√n)``; drawn here from the portable stream."""

INIT_RULES = (LORA_A_RULE,)


def lora_a_init(seed: int, rank: int, in_features: int) -> Tensor:
    """A rank-``rank`` LoRA ``A`` under :data:`LORA_A_RULE` from ``seed``.

    Row-major from stream position 0, so the first ``k`` rows of a rank-``r`` init are the
    rank-``k`` init of the same seed (a client of a smaller rank gets a prefix).
    """
    if rank < 0 or in_features < 1:
        raise ValueError(f"need rank >= 0 and in_features >= 1, got {rank}, {in_features}")
    bound = 1.0 / float(np.sqrt(in_features))
    if rank == 0:
        return torch.zeros(0, in_features)
    return portable_uniform(seed, (rank, in_features), -bound, bound)


@dataclass(frozen=True)
class SeededInit:
    """A tensor that is sent as its seed and init rule instead of its values.

    The receiver rebuilds it with :meth:`to_dense`; only ``(rule, seed, shape)`` cross the
    wire. ``rule`` names one of :data:`INIT_RULES`.
    """

    shape: tuple[int, int]
    seed: int
    rule: str = LORA_A_RULE

    def __post_init__(self) -> None:
        if self.rule not in INIT_RULES:
            raise ValueError(f"unknown init rule {self.rule!r}; known: {', '.join(INIT_RULES)}")
        if len(self.shape) != 2 or min(self.shape) < 0 or self.shape[1] < 1:
            raise ValueError(f"init shape must be (rank, in_features >= 1), got {self.shape}")
        if not 0 <= self.seed < 1 << 63:
            raise ValueError(f"init seed must be in [0, 2^63), got {self.seed}")

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def to_dense(self) -> Tensor:
        return lora_a_init(self.seed, self.shape[0], self.shape[1])
