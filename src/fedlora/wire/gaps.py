"""The ``zstd-gaps`` position code, encoded and decoded for many tensors at once.

A position list ``x_0 < … < x_{k-1}`` becomes its gaps ``d_i = x_i - x_{i-1} - 1``
(``x_{-1} = -1``), written as one byte each, ``min(d_i, 255)``, followed by one
little-endian uint32 holding ``d_i`` for every byte that is 255 (in order), and the whole
compressed as a single Zstandard frame that declares its content size. An empty list is an
empty stream. A frame may hold several lists (:mod:`fedlora.wire.framing` shares one between
the tensors of one shape): their gap bytes end to end, then their escaped gaps in the same
order; each list's first gap is its own first position, and the receiver splits the lists
by the counts it was told.

Why this code: the sparsifiers' masks are not uniformly random (importance concentrates on
rows and columns), and an entropy coder over the gap bytes finds that structure where a
Rice or Elias-Fano code, fixed to one parameter per tensor, cannot; the compression itself
runs in C at memory speed, so only a few vectorised passes stay in numpy. Measured on the
Llama-3.2-3B FedSRD upload (``benchmarks.server``), see docs/performance.md.

Decoding is strict about everything the stream means and bounded before it allocates: the
frame must declare a content size of at most 5 bytes per position (the most ``k`` gaps can
take), hold exactly one frame and nothing after it, and decompress to exactly ``k`` bytes
plus 4 per escape; every escape must be at least 255 (a smaller gap has one spelling) and
each list's last position must lie inside its tensor. The compressed bytes themselves may be any
valid frame (another level or library version spells the same content differently).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
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
"""Positions in a batch above which its frames are compressed in two threads."""

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


def _starts(sizes: np.ndarray) -> np.ndarray:
    starts = np.zeros(sizes.size, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return starts


def batch(lists: Sequence[np.ndarray]) -> Gaps:
    """The code's view of a batch of (int64) lists, each starting at 0 or above. Raises
    :class:`StreamError` naming the first list that is not strictly increasing.

    Each list's gaps go through one buffer the size of the longest list, which stays in the
    cache between the passes over it, so only the lists and their bytes cross memory."""
    sizes = np.array([idx.size for idx in lists], dtype=np.int64)
    starts = _starts(sizes)
    symbols = np.empty(int(sizes.sum()), dtype=np.uint8)
    buffer = np.empty(int(sizes.max(initial=0)), dtype=np.int64)
    escapes: list[np.ndarray] = []
    wides: list[np.ndarray] = []
    for i, (idx, at) in enumerate(zip(lists, starts.tolist(), strict=True)):
        if not idx.size:
            continue
        gap = buffer[: idx.size]
        gap[0] = idx[0]
        np.subtract(idx[1:], idx[:-1], out=gap[1:])
        gap[1:] -= 1
        # Read as unsigned, a negative gap (a list that is not increasing) escapes too.
        unsigned = gap.view(np.uint64)
        local = np.flatnonzero(unsigned >= ESCAPE)
        if local.size:
            wide = gap[local]
            if int(wide.min()) < 0:
                raise StreamError(i, "positions are not strictly increasing")
            escapes.append(local + at)
            wides.append(wide)
        np.minimum(unsigned, ESCAPE, out=unsigned)
        np.copyto(symbols[at : at + idx.size], unsigned, casting="unsafe")
    none = np.zeros(0, dtype=np.int64)
    escaped = np.concatenate([none, *escapes])
    wide = np.concatenate([none, *wides]).astype("<u4")
    bounds = np.searchsorted(escaped, np.append(starts, symbols.size))
    return Gaps(sizes, starts, symbols, escaped, wide, bounds)


def encode_many(lists: Sequence[np.ndarray]) -> list[bytes]:
    """One frame per (int64) list, alone; the lists must already be valid (strictly
    increasing, in range). An empty list's stream is empty."""
    gaps = batch(lists)
    sizes = gaps.sizes
    made = iter(frames(gaps, [[i] for i in np.flatnonzero(sizes).tolist()]))
    return [next(made) if size else b"" for size in sizes.tolist()]


def frame_content(gaps: Gaps, lists: Sequence[int]) -> bytes:
    """The content of a frame holding ``lists`` (indices into the batch) in that order:
    their gap bytes end to end, then their escaped gaps in the same order."""
    symbols, wide = gaps.symbols.data, gaps.wide.view(np.uint8).data
    starts, sizes, bounds = gaps.starts, gaps.sizes, 4 * gaps.bounds
    parts = [symbols[starts[i] : starts[i] + sizes[i]] for i in lists]
    parts += [wide[bounds[i] : bounds[i + 1]] for i in lists]
    return b"".join(parts)


def frames(gaps: Gaps, members: Sequence[Sequence[int]]) -> list[bytes]:
    """One compressed frame per group of lists of ``members`` (in two threads when the
    positions pay for a second one)."""

    def frame(g: int) -> bytes:
        # One compressor per thread: a Zstandard context is not shared between threads.
        return _compressor().compress(frame_content(gaps, members[g]))

    work = [int(gaps.sizes[list(group)].sum()) for group in members]
    return _in_two_threads(frame, work)


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(compression_params=PARAMETERS)
        _local.decompressor = zstandard.ZstdDecompressor()
    return cast(zstandard.ZstdCompressor, _local.compressor)


def _decompressor() -> zstandard.ZstdDecompressor:
    _compressor()
    return cast(zstandard.ZstdDecompressor, _local.decompressor)


def _in_two_threads(fn: Callable[[int], T], work: Sequence[int]) -> list[T]:
    """``[fn(i) for i in range(len(work))]``, the calls after the first half of the ``work``
    (positions) in a second thread when there is enough to pay for one: Zstandard releases
    the GIL while it runs. The first exception by index is raised."""
    count = len(work)
    total = sum(work)
    if count < 2 or total < PARALLEL_WORK or (os.cpu_count() or 1) < 2:
        return [fn(i) for i in range(count)]
    half = min(count - 1, max(1, int(np.searchsorted(np.cumsum(work), total / 2))))
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


def _content(stream: bytes, nnz: int) -> bytes:
    if nnz == 0:
        if stream:
            raise ValueError("zstd-gaps stream for zero positions must be empty")
        return b""
    try:
        declared = zstandard.frame_content_size(stream)
    except zstandard.ZstdError:
        raise ValueError("zstd-gaps stream is not a Zstandard frame") from None
    if declared < 0:
        raise ValueError("zstd-gaps frame does not declare its content size")
    if not nnz <= declared <= 5 * nnz:
        raise ValueError(
            f"zstd-gaps frame declares {declared} bytes, {nnz} positions need {nnz}-{5 * nnz}"
        )
    try:
        return _decompressor().decompress(stream, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd-gaps frame does not decompress: {exc}") from None


def decode_many(
    streams: Sequence[bytes], numels: Sequence[int], nnzs: Sequence[int]
) -> list[np.ndarray]:
    """Strictly decode streams of one list each; :class:`StreamError` names the first bad
    one."""
    if not len(streams) == len(numels) == len(nnzs):
        raise ValueError(f"{len(streams)} streams for {len(nnzs)} position counts")
    out = []
    for i, (stream, numel, nnz) in enumerate(zip(streams, numels, nnzs, strict=True)):
        try:
            out.extend(decode_frame(stream, [numel], [nnz]))
        except ValueError as exc:
            raise StreamError(i, str(exc)) from None
    return out


class FrameError(ValueError):
    """Frame ``frame`` of a batch is invalid; ``index`` names its bad list, or is None when
    the frame itself is bad."""

    def __init__(self, frame: int, index: int | None, problem: str) -> None:
        super().__init__(problem)
        self.frame = frame
        self.index = index


def decode_frames(
    frames: Sequence[tuple[bytes, Sequence[int], Sequence[int]]],
) -> list[list[np.ndarray]]:
    """Strictly decode ``(stream, numels, nnzs)`` frames (see :func:`decode_frame`);
    :class:`FrameError` names the first bad one. (One thread: a second one was slower here,
    its many short numpy calls contending for the GIL.)"""
    out = []
    for f, (stream, numels, nnzs) in enumerate(frames):
        try:
            out.append(decode_frame(stream, numels, nnzs))
        except StreamError as exc:
            raise FrameError(f, exc.index, str(exc)) from None
        except ValueError as exc:
            raise FrameError(f, None, str(exc)) from None
    return out


def decode_frame(stream: bytes, numels: Sequence[int], nnzs: Sequence[int]) -> list[np.ndarray]:
    """Strictly decode one frame holding lists of ``nnzs`` positions in tensors of
    ``numels`` elements. A problem of the frame raises ``ValueError``; a list that ends
    outside its tensor raises :class:`StreamError` with its index."""
    sizes = np.asarray(nnzs, dtype=np.int64)
    total = int(sizes.sum())
    content = _content(stream, total)
    if len(content) < total:
        raise ValueError(f"zstd-gaps content is {len(content)} bytes, {total} positions need more")
    symbols = np.frombuffer(content, dtype=np.uint8, count=total)
    escaped = np.flatnonzero(symbols == ESCAPE)
    if len(content) != total + 4 * escaped.size:
        raise ValueError(
            f"zstd-gaps content is {len(content)} bytes, {total} positions with "
            f"{escaped.size} escapes need {total + 4 * escaped.size}"
        )
    wide = np.frombuffer(content, dtype="<u4", offset=total)
    if wide.size and int(wide.min()) < ESCAPE:
        raise ValueError(f"zstd-gaps escape holds a gap below {ESCAPE}")
    # gap + 1 as int64 (torch widens about twice as fast as numpy's mixed-type add)
    steps = torch.from_numpy(symbols.copy()).to(torch.int64).add_(1).numpy()
    steps[escaped] = wide.astype(np.int64) + 1
    return _positions(steps, _starts(sizes), sizes, np.asarray(numels, dtype=np.int64))


def _positions(
    steps: np.ndarray, starts: np.ndarray, sizes: np.ndarray, numels: np.ndarray
) -> list[np.ndarray]:
    """Every list's positions from its ``gap + 1`` steps (a running sum per list, each
    first step less one), each list checked to end inside its tensor."""
    full = starts[sizes > 0]
    steps[full] -= 1
    running = torch.from_numpy(steps)  # torch's in-place cumsum is ~3x numpy's here
    pieces = []
    for start, stop in zip(starts.tolist(), (starts + sizes).tolist(), strict=True):
        running[start:stop].cumsum_(0)
        pieces.append(steps[start:stop])
    lasts = np.where(sizes > 0, steps[np.maximum(starts + sizes - 1, 0)] if steps.size else 0, -1)
    outside = np.flatnonzero(lasts >= numels)
    if outside.size:
        i = int(outside[0])
        raise StreamError(i, f"positions out of range [0, {int(numels[i])})")
    return pieces
