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
``zstd-gaps``
    The gaps as bytes (escaped above 254) compressed with Zstandard: see
    :mod:`fedlora.wire.gaps`. In a payload, the lists of one shape share frames
    (:mod:`fedlora.wire.framing`); :func:`encode_zstd_gaps` writes one list's own frame.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlora.wire import gaps as zstd_gaps

MAX_NUMEL = 1 << 31
"""Largest tensor the codes accept; keeps every intermediate sum inside int64."""

MAX_PARAM_BITS = 31
"""Largest low-bit width / Rice parameter of any tensor (:func:`max_param` bounds it by the
tensor's size)."""

ENCODINGS = ("bitmap", "elias-fano", "rice", "zstd-gaps")
"""Every position code, in the order that breaks a tie in size."""


@dataclass(frozen=True)
class Encoded:
    """One encoded position list: the code's name, its parameters and its bytes."""

    encoding: str
    params: dict[str, Any]
    data: bytes


# --------------------------------------------------------------------------- bit helpers

_CHUNK_BYTES = 1 << 18
"""Bytes of a stream unpacked at once: decoding never holds more than 8x this in bits."""

_CHUNK_VALUES = 1 << 16
"""Fixed-width fields read at once (a multiple of 8: every chunk starts on a byte)."""


def max_param(numel: int) -> int:
    """Largest low-bit width / Rice parameter a tensor of ``numel`` elements can need.

    A wider field only adds bits (every quotient is already zero), so the encoders never
    choose one and the decoders refuse one before reading any stream.
    """
    return min(MAX_PARAM_BITS, max(1, int(numel).bit_length()))


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.bool_, copy=False), bitorder="little").tobytes()


def _check_length(data: bytes, nbits: int) -> None:
    if len(data) != (nbits + 7) // 8:
        raise ValueError(f"position stream is {len(data)} bytes, expected {(nbits + 7) // 8}")


def _ones(stream: np.ndarray, start: int, stop: int, limit: int) -> np.ndarray:
    """Bit offsets (from ``start``) of the set bits of ``stream`` in ``[start, stop)``.

    Works a chunk of bytes at a time and stops as soon as more than ``limit`` bits are
    set, so a hostile stream costs at most ``limit`` positions plus one chunk of memory.
    """
    found: list[np.ndarray] = []
    count = 0
    first, last = start >> 3, (stop + 7) >> 3
    for lo in range(first, last, _CHUNK_BYTES):
        hi = min(last, lo + _CHUNK_BYTES)
        bits = np.unpackbits(stream[lo:hi], bitorder="little")
        base = lo << 3
        bits = bits[max(0, start - base) : stop - base]
        ones = np.flatnonzero(bits)
        count += ones.size
        if count > limit:
            raise ValueError(f"position stream marks more than {limit} positions")
        if ones.size:
            found.append(ones + (max(start, base) - start))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _fixed_width_bits(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` (uint64) as ``width`` little-endian bits each, concatenated."""
    out = np.empty((values.size, width), dtype=np.bool_)
    for j in range(width):  # a loop over bit planes, not over elements
        out[:, j] = (values >> np.uint64(j)) & np.uint64(1)
    return out.reshape(-1)


def _read_fixed_width(stream: np.ndarray, count: int, width: int) -> np.ndarray:
    """The first ``count`` ``width``-bit little-endian fields of ``stream`` (width <= 31).

    A chunk of fields (a multiple of 8, so each chunk starts on a byte) is unpacked to
    bits and repacked four bytes per field, so memory stays proportional to the output.
    """
    out = np.zeros(count, dtype=np.int64)
    if width == 0 or count == 0:
        return out
    for lo in range(0, count, _CHUNK_VALUES):
        hi = min(count, lo + _CHUNK_VALUES)
        nbits = (hi - lo) * width
        first = lo * width // 8
        bits = np.unpackbits(
            stream[first : first + (nbits + 7) // 8], bitorder="little", count=nbits
        ).reshape(hi - lo, width)
        packed = np.packbits(bits, axis=1, bitorder="little")
        words = np.zeros((hi - lo, 4), dtype=np.uint8)
        words[:, : packed.shape[1]] = packed
        out[lo:hi] = words.view("<u4").reshape(-1)
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


def _stream(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


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
    top = max_param(numel)
    candidates = [c for c in (guess - 1, guess, guess + 1) if 0 <= c <= top] or [top]
    return min(candidates, key=lambda c: (elias_fano_bits(numel, nnz, c), c))


def _rice_quotient_sum(gaps: np.ndarray, param: int) -> int:
    return int(np.sum(gaps >> param, dtype=np.int64))


def rice_bits(gaps: np.ndarray, param: int) -> int:
    """Exact size of a Rice stream in bits before byte padding."""
    return gaps.size * (param + 1) + _rice_quotient_sum(gaps, param)


def best_rice_param(gaps: np.ndarray, numel: int) -> int:
    """The Rice parameter with the smallest exact cost (searched around log2 of the mean gap)."""
    if gaps.size == 0:
        return 0
    mean = float(gaps.mean()) + 1.0
    top = max_param(numel)
    centre = min(top, max(0, int(math.log2(mean))))
    candidates = range(max(0, centre - 2), min(top, centre + 2) + 1)
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
    _check_length(data, bitmap_bits(numel))
    stream = _stream(data)
    idx = _ones(stream, 0, numel, nnz)
    if idx.size != nnz:
        raise ValueError(f"bitmap marks {idx.size} positions, the values count is {nnz}")
    _check_padding(stream, numel)
    return idx


def _check_padding(stream: np.ndarray, nbits: int) -> None:
    try:
        _ones(stream, nbits, stream.size * 8, 0)
    except ValueError:
        raise ValueError("nonzero padding bits after the position stream") from None


def _check_param(name: str, value: int, numel: int) -> None:
    top = max_param(numel)
    if not 0 <= value <= top:
        raise ValueError(f"{name} {value} outside [0, {top}] for a tensor of {numel} elements")


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
    _check_param("Elias-Fano low_bits", low_bits, numel)
    if nnz == 0:
        if data:
            raise ValueError("Elias-Fano stream for zero positions must be empty")
        return np.zeros(0, dtype=np.int64)
    total = elias_fano_bits(numel, nnz, low_bits)
    _check_length(data, total)
    stream = _stream(data)
    ones = _ones(stream, nnz * low_bits, total, nnz)
    if ones.size != nnz:
        raise ValueError(f"Elias-Fano upper bits mark {ones.size} positions, expected {nnz}")
    _check_padding(stream, total)
    lows = _read_fixed_width(stream, nnz, low_bits)
    idx = ((ones - np.arange(nnz, dtype=np.int64)) << low_bits) | lows
    return _check_positions(idx, numel)


def encode_rice(indices: np.ndarray, numel: int, param: int | None = None) -> Encoded:
    idx = _check_positions(indices, numel)
    gaps = np.diff(idx, prepend=-1) - 1
    b = best_rice_param(gaps, numel) if param is None else param
    if idx.size == 0:
        return Encoded("rice", {"param": b}, b"")
    rems = _fixed_width_bits((gaps & ((1 << b) - 1)).astype(np.uint64), b)
    quotients = gaps >> b
    unary = np.zeros(int(quotients.sum()) + idx.size, dtype=np.bool_)
    unary[np.cumsum(quotients + 1) - 1] = True
    return Encoded("rice", {"param": b}, _pack(np.concatenate([rems, unary])))


def decode_rice(data: bytes, numel: int, nnz: int, param: int) -> np.ndarray:
    _check_param("Rice parameter", param, numel)
    if nnz == 0:
        if data:
            raise ValueError("Rice stream for zero positions must be empty")
        return np.zeros(0, dtype=np.int64)
    # The gaps of nnz positions in numel elements sum to at most numel - nnz, so their
    # quotients sum to at most (numel - nnz) >> param: that bounds the stream before
    # a single bit is read.
    shortest = nnz * (param + 1)
    longest = shortest + ((numel - nnz) >> param)
    if len(data) < (shortest + 7) // 8:
        raise ValueError(f"Rice stream of {len(data)} bytes is too short for {nnz} positions")
    if len(data) > (longest + 7) // 8:
        raise ValueError(
            f"Rice stream of {len(data)} bytes is longer than {nnz} positions in range "
            f"[0, {numel}) can be: positions out of range"
        )
    stream = _stream(data)
    ones = _ones(stream, nnz * param, len(data) * 8, nnz)
    if ones.size != nnz:
        raise ValueError(f"Rice unary part marks {ones.size} positions, expected {nnz}")
    _check_length(data, nnz * param + int(ones[-1]) + 1)  # exact length; padding is zero
    rems = _read_fixed_width(stream, nnz, param)
    quotients = np.diff(ones, prepend=-1) - 1
    if int(quotients.max()) > (numel >> param):
        raise ValueError(f"positions out of range [0, {numel})")
    gaps = (quotients << param) | rems
    idx = np.cumsum(gaps + 1) - 1
    return _check_positions(idx, numel)


def encode_zstd_gaps(indices: np.ndarray, numel: int) -> Encoded:
    idx = _check_positions(indices, numel)
    return Encoded("zstd-gaps", {}, zstd_gaps.encode_many([idx])[0])


class PositionError(ValueError):
    """A position list or stream of a batch is invalid; ``index`` says which one."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index


def batch_lists(
    items: Sequence[tuple[np.ndarray, int]],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The lists of a batch (flat int64), their sizes, and their tensors' sizes."""
    lists = [np.asarray(idx, dtype=np.int64).reshape(-1) for idx, _ in items]
    sizes = np.array([idx.size for idx in lists], dtype=np.int64)
    numels = np.array([int(numel) for _, numel in items], dtype=np.int64)
    for i, numel in enumerate(numels.tolist()):
        if not 0 <= numel <= MAX_NUMEL:
            raise PositionError(i, f"tensor of {numel} elements is outside [0, 2^31]")
    return lists, sizes, numels


def checked_gaps(
    lists: Sequence[np.ndarray], sizes: np.ndarray, numels: np.ndarray
) -> zstd_gaps.Gaps:
    """The batch's gaps, every list checked on the way: first position >= 0, last below its
    tensor's size, strictly increasing."""
    firsts = np.array([idx[0] if idx.size else 0 for idx in lists], dtype=np.int64)
    lasts = np.array([idx[-1] if idx.size else -1 for idx in lists], dtype=np.int64)
    outside = np.flatnonzero((firsts < 0) | (lasts >= numels))
    if outside.size:
        i = int(outside[0])
        raise PositionError(i, f"positions out of range [0, {int(numels[i])})")
    try:
        return zstd_gaps.batch(lists)
    except zstd_gaps.StreamError as exc:
        raise PositionError(exc.index, str(exc)) from None


def elias_fano_bits_many(numels: np.ndarray, nnzs: np.ndarray) -> np.ndarray:
    """:func:`elias_fano_bits` at :func:`best_low_bits` for arrays of non-empty lists."""
    numels, nnzs = np.asarray(numels, dtype=np.int64), np.asarray(nnzs, dtype=np.int64)
    guess = np.floor(np.log2(np.maximum(numels, 1) / nnzs)).astype(np.int64)
    top = np.minimum(MAX_PARAM_BITS, np.maximum(1, np.ceil(np.log2(numels + 1)))).astype(np.int64)
    best = np.full(numels.shape, np.iinfo(np.int64).max)
    for step in (-1, 0, 1):
        low = np.clip(guess + step, 0, top)
        best = np.minimum(best, nnzs * low + nnzs + ((numels - 1) >> low) + 1)
    return best


def rice_lower_bound(nnz: int, gap_sum: int) -> float:
    """Fewer bits than any Rice parameter spends on ``nnz`` gaps summing to ``gap_sum``.

    Each quotient ``d >> b`` is at least ``(d - 2^b + 1) / 2^b``, so a parameter ``b`` costs
    at least ``f(b) = nnz·b + (gap_sum + nnz) / 2^b``; over real ``b`` that is smallest at
    ``2^b = (gap_sum + nnz)·ln 2 / nnz``.
    """
    if nnz == 0:
        return 0.0
    ratio = max((gap_sum + nnz) * math.log(2) / nnz, 1.0)
    return nnz * math.log2(ratio) + (gap_sum + nnz) / ratio


def rice_lower_bound_many(nnzs: np.ndarray, gap_sums: np.ndarray) -> np.ndarray:
    """:func:`rice_lower_bound` for arrays of non-empty lists."""
    nnzs, total = np.asarray(nnzs, dtype=np.float64), np.asarray(gap_sums, dtype=np.float64)
    ratio = np.maximum((total + nnzs) * math.log(2) / nnzs, 1.0)
    bound: np.ndarray = nnzs * np.log2(ratio) + (total + nnzs) / ratio
    return bound


ENCODERS = {"bitmap": encode_bitmap, "elias-fano": encode_elias_fano, "rice": encode_rice}


def decode_positions(
    encoding: str, params: dict[str, Any], data: bytes, numel: int, nnz: int
) -> np.ndarray:
    """Strictly decode a position stream; ``ValueError`` says what is wrong."""
    return decode_many([(encoding, params, data, numel, nnz)])[0]


def decode_many(
    streams: Sequence[tuple[str, dict[str, Any], bytes, int, int]],
) -> list[np.ndarray]:
    """Strictly decode ``(encoding, params, data, numel, nnz)`` streams: the ``zstd-gaps``
    ones together, the others one by one. Raises :class:`PositionError`."""
    out: list[np.ndarray | None] = [None] * len(streams)
    batch: list[int] = []
    for i, (encoding, params, data, numel, nnz) in enumerate(streams):
        if not 0 <= nnz <= numel <= MAX_NUMEL:
            raise PositionError(i, f"{nnz} positions in {numel} elements is impossible")
        try:
            if encoding == "zstd-gaps":
                if params:
                    raise ValueError(f"zstd-gaps takes no parameters, got {sorted(params)}")
                batch.append(i)
            else:
                out[i] = _decode_one(encoding, params, data, numel, nnz)
        except ValueError as exc:
            raise PositionError(i, str(exc)) from None
    try:
        decoded = zstd_gaps.decode_many(
            [streams[i][2] for i in batch],
            [streams[i][3] for i in batch],
            [streams[i][4] for i in batch],
        )
    except zstd_gaps.StreamError as exc:
        raise PositionError(batch[exc.index], str(exc)) from None
    for i, idx in zip(batch, decoded, strict=True):
        out[i] = idx
    return [idx for idx in out if idx is not None]


def _decode_one(
    encoding: str, params: dict[str, Any], data: bytes, numel: int, nnz: int
) -> np.ndarray:
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
