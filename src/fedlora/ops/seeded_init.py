"""Portable seeded initialisation: the same tensor from the same seed on every platform.

``torch.Generator`` streams are not promised to stay stable across torch releases, so a
tensor that two parties must derive independently (FFA-LoRA's frozen ``A``, which is never
sent) is drawn from the SplitMix64 stream of ``fedlora.ops.prng`` instead: 53-bit uniform
fractions computed with integer arithmetic, mapped to floats with exact IEEE operations.
"""

from __future__ import annotations

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
