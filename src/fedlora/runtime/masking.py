"""The arithmetic of secure aggregation: fixed-point values modulo ``2**bits`` and the masks
that hide them.

A client's vector becomes integers modulo ``2**bits`` (:func:`to_fixed`: scaled, rounded
stochastically so that the rounding is unbiased, negative values in two's complement); masks
are added modulo the same power of two and cancel in the sum; the server reads the unmasked
sum back as signed fixed point (:func:`from_fixed`). The sum is exact while
``Σ_k |x_k|·scale < 2**(bits−1)`` on every coordinate (:func:`fits`).

Each mask is expanded from the whole shared secret (no fold to fewer bits) by the ChaCha20
stream cipher of the ``cryptography`` package, keyed by SHA-256 of a purpose label and the
secret: a mask reveals nothing about another, and two secrets that differ anywhere give
unrelated masks. (Flower 1.41's ``pseudo_rand_gen`` folds a seed to 32 bits and expands it
with MT19937, so 2**32 guesses regenerate any mask; it is not used.) Values travel as words of
the modulus' width: 32-bit words for ``bits <= 32``, 64-bit words above.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MASK_LABEL = b"fedlora secure aggregation mask v1"


def word_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """The unsigned word a value modulo ``2**bits`` travels in (little-endian)."""
    if not 8 <= bits <= 64:
        raise ValueError(f"modulus bits must be in [8, 64]; got {bits}")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def _reduce(words: np.ndarray, bits: int) -> np.ndarray:
    dtype = word_dtype(bits)
    if bits == dtype.itemsize * 8:
        return words.astype(dtype, copy=False)
    return (words & dtype.type((1 << bits) - 1)).astype(dtype, copy=False)


def expand_mask(secret: bytes, count: int, bits: int) -> np.ndarray:
    """``count`` uniform values modulo ``2**bits`` from the ChaCha20 keystream keyed by
    ``SHA-256(label ‖ secret)`` (nonce zero: each key expands one mask)."""
    if len(secret) < 16:
        raise ValueError(f"a mask secret needs at least 16 bytes; got {len(secret)}")
    if count < 0:
        raise ValueError(f"mask length must be >= 0; got {count}")
    dtype = word_dtype(bits)
    key = hashlib.sha256(MASK_LABEL + secret).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    raw = stream.update(bytes(count * dtype.itemsize))
    return _reduce(np.frombuffer(raw, dtype=dtype).copy(), bits)


def add_mod(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """``(x + y) mod 2**bits`` of two word arrays."""
    return _reduce(x + y, bits)  # unsigned words wrap at their width, which 2**bits divides


def sub_mod(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """``(x − y) mod 2**bits`` of two word arrays."""
    return _reduce(x - y, bits)


def fits(bound: float, scale: float, clients: int, bits: int) -> bool:
    """Whether ``clients`` values of magnitude at most ``bound`` sum exactly: the fixed-point
    total stays inside the signed range of ``bits`` bits (one unit of rounding per client)."""
    return clients * (bound * scale + 1) < 2 ** (bits - 1)


def to_fixed(values: np.ndarray, scale: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``values·scale`` rounded stochastically (down with probability equal to the distance
    to the floor's successor, so the expected result is exact) to integers modulo
    ``2**bits``; a value that would not fit in ``bits − 1`` bits and a sign is refused."""
    wide = np.asarray(values, dtype=np.float64) * scale
    if not np.isfinite(wide).all():
        raise ValueError("fixed point: values must be finite")
    low = np.floor(wide)
    rounded = low + (rng.random(wide.shape) < (wide - low))
    limit = 2.0 ** (bits - 1)
    if rounded.size and (rounded.min() < -limit or rounded.max() >= limit):
        raise ValueError(f"fixed point: a value times {scale:g} does not fit {bits} bits")
    signed = rounded.astype(np.int64)
    return _reduce(signed.astype(np.uint64), bits)  # two's complement, then cut to the width


def from_fixed(total: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """Signed fixed point modulo ``2**bits`` back to float64 (divided by ``scale``)."""
    wide = total.astype(np.int64) if bits < 64 else total.view(np.int64)
    if bits < 64:
        wide = np.where(wide >= 2 ** (bits - 1), wide - 2**bits, wide)
    return wide.astype(np.float64) / scale
