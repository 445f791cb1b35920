"""A portable, seeded random mask generator.

Seeded masks (DARE) can be sent as their seed alone, so sender and receiver must derive the
same positions on every platform and library version. ``torch.Generator`` streams are not
promised to stay stable across releases, so the mask is built from SplitMix64 (Steele, Lea
and Flood, 2014), a counter-based hash that is defined entirely by 64-bit integer arithmetic:
element ``i`` of the stream for seed ``s`` is ``splitmix64(s + (i + 1) * GOLDEN)``. It is
evaluated with numpy's wrapping ``uint64`` arithmetic, vectorised, in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 16
"""Elements per vectorised step: 512 KiB of uint64, so the temporaries stay in cache."""


def _mix(z: np.ndarray, tmp: np.ndarray) -> None:
    """SplitMix64's finaliser applied to ``z`` in place (``tmp``: scratch of the same size)."""
    with np.errstate(over="ignore"):
        np.right_shift(z, np.uint64(30), out=tmp)
        np.bitwise_xor(z, tmp, out=z)
        np.multiply(z, _M1, out=z)
        np.right_shift(z, np.uint64(27), out=tmp)
        np.bitwise_xor(z, tmp, out=z)
        np.multiply(z, _M2, out=z)
        np.right_shift(z, np.uint64(31), out=tmp)
        np.bitwise_xor(z, tmp, out=z)


with np.errstate(over="ignore"):
    _STEPS = np.arange(1, _CHUNK + 1, dtype=np.uint64) * _GOLDEN
"""``(i + 1) * GOLDEN`` for ``i < _CHUNK``: a chunk's counters are these plus one offset."""


def _counters(seed: int, start: int, count: int, out: np.ndarray) -> None:
    """``out[i] = seed + (start + i + 1) * GOLDEN`` (wrapping uint64), ``count <= _CHUNK``."""
    offset = (seed + start * int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF
    with np.errstate(over="ignore"):
        np.add(_STEPS[:count], np.uint64(offset), out=out)


def _chunks(seed: int, start: int, count: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, outputs)`` of the stream from ``start``, ``_CHUNK`` at a time; each chunk
    reuses one buffer, so a caller keeps what it needs before asking for the next."""
    z = np.empty(min(count, _CHUNK), dtype=np.uint64)
    tmp = np.empty_like(z)
    for lo in range(0, count, _CHUNK):
        n = min(_CHUNK, count - lo)
        _counters(seed, start + lo, n, z[:n])
        _mix(z[:n], tmp[:n])
        yield lo, z[:n]


def splitmix64(seed: int, start: int, count: int) -> np.ndarray:
    """Return ``count`` uint64 outputs of the SplitMix64 stream for ``seed`` from ``start``."""
    if count < 0 or start < 0:
        raise ValueError("start and count must be non-negative")
    out = np.empty(count, dtype=np.uint64)
    for lo, z in _chunks(seed, start, count):
        out[lo : lo + z.size] = z
    return out


def seeded_keep_mask(seed: int, numel: int, keep_prob: float) -> torch.Tensor:
    """Boolean mask of ``numel`` elements, each kept independently with ``keep_prob``.

    Element ``i`` is kept iff the top 53 bits of ``splitmix64(seed, i)``, read as a fraction
    in [0, 1), are below ``keep_prob``. The same (seed, numel, keep_prob) gives the same mask
    everywhere.
    """
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    threshold = int(keep_prob * (1 << 53))
    if threshold >= 1 << 53:  # every 53-bit fraction is below 1
        return torch.ones(numel, dtype=torch.bool)
    # (z >> 11) < t  <=>  z < t * 2^11 for integers, which saves a shift per element.
    limit = np.uint64(threshold << 11)
    out = np.empty(numel, dtype=np.bool_)
    for lo, z in _chunks(seed, 0, numel):
        np.less(z, limit, out=out[lo : lo + z.size])
    return torch.from_numpy(out)
