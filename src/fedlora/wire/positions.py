"""Position codes for sparse tensors: which flat positions of a tensor hold values.

A sparse tensor of ``n`` elements with ``k`` values has strictly increasing flat positions
``x_0 < x_1 < … < x_{k-1} < n``. Three codes are provided as pure, vectorised functions:

``bitmap``
    One bit per element (bit ``i`` of the stream is 1 iff ``i`` is a position); ``⌈n/8⌉``
    bytes. Best for dense masks (density ≳ 30 %).
``elias-fano``
    Each position split into ``l`` low bits, stored verbatim, and a high part
    ``x_i >> l`` stored in unary as a bit vector of ``k + ((n-1) >> l) + 1`` bits where bit
    ``(x_i >> l) + i`` is set. ``k·(l + 1) + (n >> l)`` bits in total, within about
    ``k·(2 + log2(n/k))``, i.e. near the ``log2 C(n, k)`` bound at every density.
``rice``
    Gaps ``d_i = x_i - x_{i-1} - 1`` (``x_{-1} = -1``) Golomb-Rice coded with parameter
    ``b``: the ``b`` low bits of every gap verbatim, then every quotient ``d_i >> b`` in
    unary (that many 0s, then a 1). The best ``b`` is found by evaluating the exact cost.

(The fourth code, ``seed``, sends no positions at all: see :mod:`fedlora.wire.codec`.)

Bit streams are packed little-endian within bytes (bit ``j`` of the stream is bit
``j % 8`` of byte ``j // 8``); the fixed-width low parts come first, then the unary part;
padding bits in the last byte are zero. Decoders are strict: any stream that is not exactly
what the encoder would produce for some valid position list raises ``ValueError`` with the
problem; callers (the codec) add the tensor name. Sizes are computed from the parameters
before anything is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_NUMEL = 1 << 31
"""Largest tensor the codes accept; keeps every intermediate sum inside int64."""

MAX_PARAM_BITS = 31
"""Largest low-bit width / Rice parameter (no tensor reaches 2^31 elements)."""

ENCODINGS = ("bitmap", "elias-fano", "rice")


@dataclass(frozen=True)
class Encoded:
    """One encoded position list: the code's name, its parameters and its bytes."""

    encoding: str
    params: dict[str, Any]
    data: bytes


# --------------------------------------------------------------------------- bit helpers


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.bool_, copy=False), bitorder="little").tobytes()


def _unpack(data: bytes, nbits: int) -> np.ndarray:
    """The first ``nbits`` bits of ``data``; the remaining (padding) bits must be zero."""
    if len(data) != (nbits + 7) // 8:
        raise ValueError(f"position stream is {len(data)} bytes, expected {(nbits + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[nbits:].any():
        raise ValueError("nonzero padding bits after the position stream")
    return bits[:nbits]


def _fixed_width_bits(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` (uint64) as ``width`` little-endian bits each, concatenated."""
    out = np.empty((values.size, width), dtype=np.bool_)
    for j in range(width):  # a loop over bit planes, not over elements
        out[:, j] = (values >> np.uint64(j)) & np.uint64(1)
    return out.reshape(-1)


def _read_fixed_width(bits: np.ndarray, count: int, width: int) -> np.ndarray:
    planes = bits[: count * width].reshape(count, width).astype(np.int64)
    out = np.zeros(count, dtype=np.int64)
    for j in range(width):
        out |= planes[:, j] << j
    return out


def _check_positions(indices: np.ndarray, numel: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not 0 <= numel <= MAX_NUMEL:
        raise ValueError(f"tensor of {numel} elements is outside [0, 2^31]")
    if idx.size:
        if idx[0] < 0 or idx[-1] >= numel:
            raise ValueError(f"positions out of range [0, {numel})")
        if idx.size > 1 and not bool(np.all(np.diff(idx) > 0)):
            raise ValueError("positions are not strictly increasing")
    return idx


# --------------------------------------------------------------------------- sizes


def bitmap_bits(numel: int) -> int:
    """Size of a bitmap in bits before byte padding."""
    return numel


def elias_fano_bits(numel: int, nnz: int, low_bits: int) -> int:
    """Exact size of an Elias-Fano stream in bits before byte padding."""
    if nnz == 0:
        return 0
    return nnz * low_bits + nnz + ((numel - 1) >> low_bits) + 1


def best_low_bits(numel: int, nnz: int) -> int:
    """The ``l`` that minimises :func:`elias_fano_bits` (near ``log2(n/k)``)."""
    if nnz == 0:
        return 0
    guess = max(0, int(math.floor(math.log2(max(numel, 1) / nnz))))
    candidates = [c for c in (guess - 1, guess, guess + 1) if 0 <= c <= MAX_PARAM_BITS]
    return min(candidates, key=lambda c: (elias_fano_bits(numel, nnz, c), c))


def _rice_quotient_sum(gaps: np.ndarray, param: int) -> int:
    return int(np.sum(gaps >> param, dtype=np.int64))


def rice_bits(gaps: np.ndarray, param: int) -> int:
    """Exact size of a Rice stream in bits before byte padding."""
    return gaps.size * (param + 1) + _rice_quotient_sum(gaps, param)


def best_rice_param(gaps: np.ndarray) -> int:
    """The Rice parameter with the smallest exact cost (searched around log2 of the mean gap)."""
    if gaps.size == 0:
        return 0
    mean = float(gaps.mean()) + 1.0
    centre = max(0, int(math.log2(mean)))
    candidates = range(max(0, centre - 2), min(MAX_PARAM_BITS, centre + 2) + 1)
    return min(candidates, key=lambda b: (rice_bits(gaps, b), b))


def information_bound_bits(numel: int, nnz: int) -> float:
    """``log2 C(numel, nnz)``: the fewest bits any code can spend on ``nnz`` positions."""
    if nnz < 0 or nnz > numel:
        raise ValueError(f"{nnz} positions do not fit in {numel} elements")
    ln_c = math.lgamma(numel + 1) - math.lgamma(nnz + 1) - math.lgamma(numel - nnz + 1)
    return max(0.0, ln_c / math.log(2))


# --------------------------------------------------------------------------- codes


def encode_bitmap(indices: np.ndarray, numel: int) -> Encoded:
    idx = _check_positions(indices, numel)
    mask = np.zeros(numel, dtype=np.bool_)
    mask[idx] = True
    return Encoded("bitmap", {}, _pack(mask))


def decode_bitmap(data: bytes, numel: int, nnz: int) -> np.ndarray:
    idx = np.flatnonzero(_unpack(data, bitmap_bits(numel))).astype(np.int64)
    if idx.size != nnz:
        raise ValueError(f"bitmap marks {idx.size} positions, the values count is {nnz}")
    return idx


def encode_elias_fano(indices: np.ndarray, numel: int, low_bits: int | None = None) -> Encoded:
    idx = _check_positions(indices, numel)
    k = idx.size
    low = best_low_bits(numel, k) if low_bits is None else low_bits
    if k == 0:
        return Encoded("elias-fano", {"low_bits": low}, b"")
    upper_len = k + ((numel - 1) >> low) + 1
    lows = _fixed_width_bits((idx & ((1 << low) - 1)).astype(np.uint64), low)
    upper = np.zeros(upper_len, dtype=np.bool_)
    upper[(idx >> low) + np.arange(k, dtype=np.int64)] = True
    return Encoded("elias-fano", {"low_bits": low}, _pack(np.concatenate([lows, upper])))


def decode_elias_fano(data: bytes, numel: int, nnz: int, low_bits: int) -> np.ndarray:
    if not 0 <= low_bits <= MAX_PARAM_BITS:
        raise ValueError(f"Elias-Fano low_bits {low_bits} outside [0, {MAX_PARAM_BITS}]")
    if nnz == 0:
        if data:
            raise ValueError("Elias-Fano stream for zero positions must be empty")
        return np.zeros(0, dtype=np.int64)
    bits = _unpack(data, elias_fano_bits(numel, nnz, low_bits))
    lows = _read_fixed_width(bits, nnz, low_bits)
    ones = np.flatnonzero(bits[nnz * low_bits :])
    if ones.size != nnz:
        raise ValueError(f"Elias-Fano upper bits mark {ones.size} positions, expected {nnz}")
    idx = ((ones - np.arange(nnz, dtype=np.int64)) << low_bits) | lows
    return _check_positions(idx, numel)


def encode_rice(indices: np.ndarray, numel: int, param: int | None = None) -> Encoded:
    idx = _check_positions(indices, numel)
    gaps = np.diff(idx, prepend=-1) - 1
    b = best_rice_param(gaps) if param is None else param
    if idx.size == 0:
        return Encoded("rice", {"param": b}, b"")
    rems = _fixed_width_bits((gaps & ((1 << b) - 1)).astype(np.uint64), b)
    quotients = gaps >> b
    unary = np.zeros(int(quotients.sum()) + idx.size, dtype=np.bool_)
    unary[np.cumsum(quotients + 1) - 1] = True
    return Encoded("rice", {"param": b}, _pack(np.concatenate([rems, unary])))


def decode_rice(data: bytes, numel: int, nnz: int, param: int) -> np.ndarray:
    if not 0 <= param <= MAX_PARAM_BITS:
        raise ValueError(f"Rice parameter {param} outside [0, {MAX_PARAM_BITS}]")
    if nnz == 0:
        if data:
            raise ValueError("Rice stream for zero positions must be empty")
        return np.zeros(0, dtype=np.int64)
    # The unary part ends at its k-th one; only that length is valid, so the stream length
    # is checked against it once the ones are found.
    raw = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if raw.size < nnz * param + nnz:
        raise ValueError(f"Rice stream of {len(data)} bytes is too short for {nnz} positions")
    rems = _read_fixed_width(raw, nnz, param)
    ones = np.flatnonzero(raw[nnz * param :])
    if ones.size != nnz:
        raise ValueError(f"Rice unary part marks {ones.size} positions, expected {nnz}")
    total = nnz * param + int(ones[-1]) + 1
    _unpack(data, total)  # exact length and zero padding
    quotients = np.diff(ones, prepend=-1) - 1
    if int(quotients.max()) > (numel >> param):
        raise ValueError(f"positions out of range [0, {numel})")
    gaps = (quotients << param) | rems
    idx = np.cumsum(gaps + 1) - 1
    return _check_positions(idx, numel)


def encode_smallest(indices: np.ndarray, numel: int) -> Encoded:
    """Encode ``indices`` with whichever code is smallest for them (ties: bitmap first)."""
    idx = _check_positions(indices, numel)
    gaps = np.diff(idx, prepend=-1) - 1
    costs = {
        "bitmap": bitmap_bits(numel),
        "elias-fano": elias_fano_bits(numel, idx.size, best_low_bits(numel, idx.size)),
        "rice": rice_bits(gaps, best_rice_param(gaps)),
    }
    best = min(ENCODINGS, key=lambda name: ((costs[name] + 7) // 8, ENCODINGS.index(name)))
    if best == "bitmap":
        return encode_bitmap(idx, numel)
    if best == "elias-fano":
        return encode_elias_fano(idx, numel)
    return encode_rice(idx, numel)


def decode_positions(
    encoding: str, params: dict[str, Any], data: bytes, numel: int, nnz: int
) -> np.ndarray:
    """Strictly decode a position stream; ``ValueError`` says what is wrong."""
    if not 0 <= nnz <= numel <= MAX_NUMEL:
        raise ValueError(f"{nnz} positions in {numel} elements is impossible")
    if encoding == "bitmap":
        return decode_bitmap(data, numel, nnz)
    if encoding == "elias-fano":
        return decode_elias_fano(data, numel, nnz, _int_param(params, "low_bits"))
    if encoding == "rice":
        return decode_rice(data, numel, nnz, _int_param(params, "param"))
    raise ValueError(f"unknown position encoding {encoding!r}")


def _int_param(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"position parameter {name!r} missing or not an integer")
    return value
