"""The ``zstd-gaps`` position code, encoded and decoded for many tensors at once.

A position list ``x_0 < … < x_{k-1}`` becomes its gaps ``d_i = x_i - x_{i-1} - 1``
(``x_{-1} = -1``), written as one byte each, ``min(d_i, 255)``, followed by one
little-endian uint32 holding ``d_i`` for every byte that is 255 (in order), and the whole
compressed as a single Zstandard frame that declares its content size. An empty list is an
empty stream.

Why this code: the sparsifiers' masks are not uniformly random (importance concentrates on
rows and columns), and an entropy coder over the gap bytes finds that structure where a
Rice or Elias-Fano code, fixed to one parameter per tensor, cannot; the compression itself
runs in C at memory speed, so only a few vectorised passes stay in numpy. Measured on the
Llama-3.2-3B FedSRD upload (``benchmarks.server``), see docs/performance.md.

Decoding is strict about everything the stream means and bounded before it allocates: the
frame must declare a content size of at most 5 bytes per position (the most ``k`` gaps can
take), hold exactly one frame and nothing after it, and decompress to exactly ``k`` bytes
plus 4 per escape; every escape must be at least 255 (a smaller gap has one spelling) and
the last position must lie inside the tensor. The compressed bytes themselves may be any
valid frame (another level or library version spells the same content differently).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import zstandard

ESCAPE = 255
"""A gap byte of 255 says "the gap is in the escape list"."""

PARAMETERS = zstandard.ZstdCompressionParameters.from_level(
    1, hash_log=6, min_match=7, write_content_size=True
)
"""Zstandard level 1 (the fast negative levels drop the entropy coding that makes the code
small), searching only long repeats: the gap bytes gain little from short matches, and on the
FedSRD upload of Llama-3.2-3B this was both 2x faster and 4% smaller than plain level 1."""

PARALLEL_WORK = 1 << 18
"""Positions in a batch above which its frames are (de)compressed in two threads."""

T = TypeVar("T")


class StreamError(ValueError):
    """A stream of the batch is invalid; ``index`` says which one."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index


@dataclass(frozen=True)
class Gaps:
    """The gaps of a batch of position lists laid end to end, as the code writes them."""

    sizes: np.ndarray  # positions per list
    starts: np.ndarray  # where each list starts in ``symbols``
    symbols: np.ndarray  # uint8: min(gap, 255)
    escaped: np.ndarray  # indices (into ``symbols``) of the gaps of 255 and more
    wide: np.ndarray  # those gaps, as little-endian uint32
    bounds: np.ndarray  # list i's escapes are ``wide[bounds[i]:bounds[i+1]]``

    def content(self, i: int) -> bytes:
        """List ``i``'s frame content: its gap bytes, then its escaped gaps."""
        start, size = int(self.starts[i]), int(self.sizes[i])
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        return self.symbols[start : start + size].tobytes() + self.wide[lo:hi].tobytes()

    def rice_bits(self, i: int, top: int) -> tuple[int, int]:
        """The exact size in bits of list ``i``'s Rice stream at its best parameter in
        ``[0, top]``, and that parameter (ties: the smaller), from a histogram of its gap
        bytes (every gap below 255 is its byte) and its escaped gaps."""
        start, size = int(self.starts[i]), int(self.sizes[i])
        counts = np.bincount(self.symbols[start : start + size], minlength=256).astype(np.int64)
        counts[ESCAPE] = 0
        params = np.arange(top + 1, dtype=np.int64)
        quotients = (np.arange(256, dtype=np.int64)[None, :] >> params[:, None]) @ counts
        wide = self.wide[int(self.bounds[i]) : int(self.bounds[i + 1])].astype(np.int64)
        if wide.size:
            quotients += (wide[None, :] >> params[:, None]).sum(axis=1)
        bits = size * (params + 1) + quotients
        best = int(np.argmin(bits))
        return int(bits[best]), best


def gaps_of(flat: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The gaps of every list of a batch (``flat`` holds the lists one after another); a
    list's first gap is its first position. All are >= 0 exactly when every list is strictly
    increasing and starts at 0 or above."""
    gaps = np.empty(flat.size, dtype=np.int64)
    if flat.size == 0:
        return gaps
    np.subtract(flat[1:], flat[:-1], out=gaps[1:])
    gaps -= 1
    starts = _starts(sizes)[sizes > 0]
    gaps[starts] = flat[starts]
    return gaps


def _starts(sizes: np.ndarray) -> np.ndarray:
    starts = np.zeros(sizes.size, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return starts


def batch(gaps: np.ndarray, sizes: np.ndarray) -> Gaps:
    """The code's view of a batch's gaps (all >= 0)."""
    symbols = np.minimum(gaps, ESCAPE).astype(np.uint8)
    escaped = np.flatnonzero(symbols == ESCAPE)
    starts = _starts(sizes)
    bounds = np.searchsorted(escaped, np.append(starts, gaps.size))
    return Gaps(sizes, starts, symbols, escaped, gaps[escaped].astype("<u4"), bounds)


def encode_many(flat: np.ndarray, sizes: np.ndarray) -> list[bytes]:
    """One stream per list; the lists must already be valid (strictly increasing, in range)."""
    return streams(batch(gaps_of(flat, sizes), sizes))


def streams(gaps: Gaps) -> list[bytes]:
    """Every list's stream (an empty list's is empty)."""

    def stream(i: int) -> bytes:
        # One compressor per thread: a Zstandard context is not shared between threads.
        return _compressor().compress(gaps.content(i)) if gaps.sizes[i] else b""

    return _in_two_threads(stream, gaps.sizes.size, int(gaps.sizes.sum()))


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(compression_params=PARAMETERS)
        _local.decompressor = zstandard.ZstdDecompressor()
    return cast(zstandard.ZstdCompressor, _local.compressor)


def _decompressor() -> zstandard.ZstdDecompressor:
    _compressor()
    return cast(zstandard.ZstdDecompressor, _local.decompressor)


def _in_two_threads(fn: Callable[[int], T], count: int, work: int) -> list[T]:
    """``[fn(i) for i in range(count)]``, the second half in a second thread when there is
    enough ``work`` (positions) to pay for one: Zstandard releases the GIL while it runs.
    The first exception by index is raised."""
    if count < 2 or work < PARALLEL_WORK or (os.cpu_count() or 1) < 2:
        return [fn(i) for i in range(count)]
    half = count // 2
    second: list[T] = []
    failure: list[BaseException] = []

    def run_second() -> None:
        try:
            second.extend(fn(i) for i in range(half, count))
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run_second, name="fedlora-zstd", daemon=True)
    worker.start()
    try:
        first = [fn(i) for i in range(half)]
    finally:
        worker.join()
    if failure:
        raise failure[0]
    return first + second


def _content(index: int, stream: bytes, nnz: int) -> bytes:
    if nnz == 0:
        if stream:
            raise StreamError(index, "zstd-gaps stream for zero positions must be empty")
        return b""
    try:
        declared = zstandard.frame_content_size(stream)
    except zstandard.ZstdError:
        raise StreamError(index, "zstd-gaps stream is not a Zstandard frame") from None
    if declared < 0:
        raise StreamError(index, "zstd-gaps frame does not declare its content size")
    if not nnz <= declared <= 5 * nnz:
        raise StreamError(
            index,
            f"zstd-gaps frame declares {declared} bytes, {nnz} positions need {nnz}-{5 * nnz}",
        )
    try:
        return _decompressor().decompress(stream, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise StreamError(index, f"zstd-gaps frame does not decompress: {exc}") from None


def decode_many(
    streams: Sequence[bytes], numels: Sequence[int], nnzs: Sequence[int]
) -> list[np.ndarray]:
    """Strictly decode a batch of streams; :class:`StreamError` names the first bad one."""
    sizes = np.asarray(nnzs, dtype=np.int64)
    if len(streams) != sizes.size:
        raise ValueError(f"{len(streams)} streams for {sizes.size} position counts")
    contents = _in_two_threads(
        lambda i: _content(i, streams[i], int(sizes[i])), sizes.size, int(sizes.sum())
    )
    symbols = np.empty(int(sizes.sum()), dtype=np.uint8)
    starts = _starts(sizes)
    for content, start, size in zip(contents, starts.tolist(), sizes.tolist(), strict=True):
        symbols[start : start + size] = np.frombuffer(content, dtype=np.uint8, count=size)
    escaped = np.flatnonzero(symbols == ESCAPE)
    counts = np.diff(np.searchsorted(escaped, np.append(starts, symbols.size)))
    wide = _escapes(contents, sizes, counts)
    steps = np.add(symbols, 1, dtype=np.int64)  # gap + 1
    steps[escaped] = wide + 1
    return _positions(steps, starts, sizes, np.asarray(numels, dtype=np.int64))


def _escapes(contents: list[bytes], sizes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The escaped gaps of every stream, in order, each stream's count and values checked."""
    wide = []
    triples = zip(contents, sizes.tolist(), counts.tolist(), strict=True)
    for i, (content, size, count) in enumerate(triples):
        if len(content) != size + 4 * count:
            raise StreamError(
                i,
                f"zstd-gaps content is {len(content)} bytes, {size} positions with {count} "
                f"escapes need {size + 4 * count}",
            )
        if count:
            values = np.frombuffer(content, dtype="<u4", offset=size)
            if int(values.min()) < ESCAPE:
                raise StreamError(i, f"zstd-gaps escape holds a gap below {ESCAPE}")
            wide.append(values)
    return np.concatenate(wide).astype(np.int64) if wide else np.zeros(0, dtype=np.int64)


def _positions(
    steps: np.ndarray, starts: np.ndarray, sizes: np.ndarray, numels: np.ndarray
) -> list[np.ndarray]:
    """Every list's positions from its ``gap + 1`` steps: one running sum over the batch,
    then each list's sum before it taken off in place (lists are views of one array), each
    list checked to end inside its tensor."""
    np.cumsum(steps, out=steps)
    stops = starts + sizes
    before = np.where(starts > 0, steps[np.maximum(starts - 1, 0)], 0) if steps.size else starts
    lasts = (
        np.where(sizes > 0, steps[np.maximum(stops - 1, 0)] - before - 1, -1)
        if steps.size
        else starts - 1
    )
    outside = np.flatnonzero(lasts >= numels)
    if outside.size:
        i = int(outside[0])
        raise StreamError(i, f"positions out of range [0, {int(numels[i])})")
    out = []
    for start, stop, offset in zip(
        starts.tolist(), stops.tolist(), (before + 1).tolist(), strict=True
    ):
        piece = steps[start:stop]
        piece -= offset
        out.append(piece)
    return out
