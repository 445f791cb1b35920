"""A portable, seeded random mask generator.

Seeded masks (DARE) can be sent as their seed alone, so sender and receiver must derive the
same positions on every platform and library version. ``torch.Generator`` streams are not
promised to stay stable across releases, so the mask is built from SplitMix64 (Steele, Lea
and Flood, 2014), a counter-based hash that is defined entirely by 64-bit integer arithmetic:
element ``i`` of the stream for seed ``s`` is ``splitmix64(s + (i + 1) * GOLDEN)``. It is
evaluated with numpy's wrapping ``uint64`` arithmetic, vectorised, in chunks.
"""

from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 22


def splitmix64(seed: int, start: int, count: int) -> np.ndarray:
    """Return ``count`` uint64 outputs of the SplitMix64 stream for ``seed`` from ``start``."""
    if count < 0 or start < 0:
        raise ValueError("start and count must be non-negative")
    counter = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + counter * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return z


def seeded_keep_mask(seed: int, numel: int, keep_prob: float) -> torch.Tensor:
    """Boolean mask of ``numel`` elements, each kept independently with ``keep_prob``.

    Element ``i`` is kept iff the top 53 bits of ``splitmix64(seed, i)``, read as a fraction
    in [0, 1), are below ``keep_prob``. The same (seed, numel, keep_prob) gives the same mask
    everywhere.
    """
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    threshold = np.uint64(int(keep_prob * (1 << 53)))
    out = np.empty(numel, dtype=np.bool_)
    for start in range(0, numel, _CHUNK):
        count = min(_CHUNK, numel - start)
        out[start : start + count] = (splitmix64(seed, start, count) >> np.uint64(11)) < threshold
    return torch.from_numpy(out)
