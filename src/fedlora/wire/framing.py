"""Where a payload's position lists travel: shared ``zstd-gaps`` frames or a code of their own.

The lists of a payload are placed together. Lists with the same group key (the codec uses
the tensor's shape, so the A factors of every layer share one frame and the B factors
another) are written as one ``zstd-gaps`` frame: their gap bytes end to end, then their
escaped gaps in the same order (see :mod:`fedlora.wire.gaps`). One frame per group costs
one compression call instead of one per tensor, and entries of one shape have alike gap
statistics, so the frame is no larger than their separate frames (measured on the
Llama-3.2-3B FedSRD upload: 0.8% smaller than 392 frames of one entry; one frame over every
entry, shapes mixed, was 6.7% larger). A group is cut into frames of at most
:data:`FRAME_POSITIONS` positions.

A list leaves its frame for a code of its own (``bitmap``, ``elias-fano`` or ``rice`` of
:mod:`fedlora.wire.positions`) when that code is smaller than its share of the frame: the
frame's bytes times its fraction of the frame's positions. The frames are then rebuilt
without the lists that left. Each list is charged its own stream's bytes or its share of
its frame (shares apportioned so a frame's charges sum to its size).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlora.wire import gaps as zstd_gaps
from fedlora.wire import positions as P

FRAME_POSITIONS = 1 << 19
"""Most positions in one frame (a longer list has one of its own): the frames of a payload
compress in two threads, and at this size they cost 188 bytes (0.01%) more than one frame per
shape on the FedSRD upload of Llama-3.2-3B."""


@dataclass(frozen=True)
class Placement:
    """How one list travels: its code, the code's parameters (``{"frame": f}`` for a list
    in shared frame ``f``), its own stream (empty in a frame) and the bytes charged to it."""

    encoding: str
    params: dict[str, Any]
    stream: bytes
    charged: int


@dataclass(frozen=True)
class Placed:
    """Every list's placement (in the order given) and the shared frames."""

    lists: tuple[Placement, ...]
    frames: tuple[bytes, ...]


def place(items: Sequence[tuple[np.ndarray, int]], keys: Sequence[Hashable]) -> Placed:
    """Place the ``(positions, numel)`` lists of a payload; lists with equal ``keys`` share
    a frame, frames are numbered in the order their first list appears. A list inside frame
    ``f`` is listed in it in the order of ``items``. Raises :class:`~fedlora.wire.positions.
    PositionError` naming the first invalid list."""
    lists, sizes, numels = P.batch_lists(items)
    gaps = P.checked_gaps(lists, sizes, numels)
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        if sizes[i]:
            groups.setdefault(key, []).append(i)
    members = [chunk for group in groups.values() for chunk in _chunks(group, sizes)]
    frames = _compress(gaps, members)
    shares = np.zeros(len(items))
    for group, frame in zip(members, frames, strict=True):
        shares[group] = len(frame) * sizes[group] / sizes[group].sum()
    own: dict[int, P.Encoded] = {}
    for i in _may_leave(lists, sizes, numels, shares).tolist():
        code = _own_code(gaps, lists[i], int(numels[i]), i, float(shares[i]))
        if code is not None:
            own[i] = code
    if own:
        members = [[i for i in group if i not in own] for group in members]
        members = [group for group in members if group]
        frames = _compress(gaps, members)
    return Placed(_placements(len(items), sizes, own, members, frames), tuple(frames))


def _chunks(group: list[int], sizes: np.ndarray) -> list[list[int]]:
    """``group`` cut into runs of lists holding at most :data:`FRAME_POSITIONS` positions
    (a longer list alone)."""
    chunks: list[list[int]] = [[]]
    held = 0
    for i in group:
        if chunks[-1] and held + sizes[i] > FRAME_POSITIONS:
            chunks.append([])
            held = 0
        chunks[-1].append(i)
        held += int(sizes[i])
    return chunks


def _compress(gaps: zstd_gaps.Gaps, members: list[list[int]]) -> list[bytes]:
    return zstd_gaps.frames(gaps, members)


def _may_leave(
    lists: list[np.ndarray], sizes: np.ndarray, numels: np.ndarray, shares: np.ndarray
) -> np.ndarray:
    """The non-empty lists for which a lower bound on some code of their own is below their
    share of a frame: the only ones :func:`_own_code` can move."""
    full = np.flatnonzero(sizes)
    if not full.size:
        return full
    n, k = numels[full], sizes[full]
    gap_sums = np.array([lists[i][-1] for i in full.tolist()], dtype=np.int64) + 1 - k
    bound = np.minimum(
        np.minimum((n + 7) // 8, (P.elias_fano_bits_many(n, k) + 7) // 8),
        P.rice_lower_bound_many(k, gap_sums) / 8,
    )
    leaving: np.ndarray = full[bound < shares[full]]
    return leaving


def _own_code(
    gaps: zstd_gaps.Gaps, idx: np.ndarray, numel: int, i: int, share: float
) -> P.Encoded | None:
    """List ``i``'s own code when one is smaller than ``share`` bytes of a frame (ties
    stay in the frame), else None."""
    size = idx.size
    costs: dict[str, float] = {
        "bitmap": (P.bitmap_bits(numel) + 7) // 8,
        "elias-fano": (P.elias_fano_bits(numel, size, P.best_low_bits(numel, size)) + 7) // 8,
    }
    rice_param = None
    gap_sum = int(idx[-1]) + 1 - size
    if P.rice_lower_bound(size, gap_sum) / 8 < min(share, *costs.values()):
        bits, rice_param = gaps.rice_bits(i, P.max_param(numel))
        costs["rice"] = (bits + 7) // 8
    best = min(costs, key=lambda name: (costs[name], P.ENCODINGS.index(name)))
    if costs[best] >= share:
        return None
    if best == "rice":
        return P.encode_rice(idx, numel, rice_param)
    return P.ENCODERS[best](idx, numel)


def _placements(
    count: int,
    sizes: np.ndarray,
    own: dict[int, P.Encoded],
    members: list[list[int]],
    frames: list[bytes],
) -> tuple[Placement, ...]:
    out: list[Placement] = [Placement("empty", {}, b"", 0)] * count
    for i, code in own.items():
        out[i] = Placement(code.encoding, code.params, code.data, len(code.data))
    for f, (group, frame) in enumerate(zip(members, frames, strict=True)):
        for i, charged in zip(group, apportion(len(frame), sizes[group]), strict=True):
            out[i] = Placement("zstd-gaps", {"frame": f}, b"", charged)
    return tuple(out)


def apportion(total: int, weights: np.ndarray) -> list[int]:
    """``total`` split in proportion to ``weights`` (positive), in whole units that sum to
    it: each gets the floor of its share, the remainder goes one each to the largest
    fractions (ties: the earlier)."""
    w = np.asarray(weights, dtype=np.int64)
    exact = total * w
    floors = exact // int(w.sum())
    left = total - int(floors.sum())
    order = np.argsort(-(exact - floors * int(w.sum())), kind="stable")
    floors[order[:left]] += 1
    return [int(x) for x in floors]


def encode_smallest_many(items: Sequence[tuple[np.ndarray, int]]) -> list[P.Encoded]:
    """The smallest code of each ``(positions, numel)`` list of a batch, each list alone:
    a ``zstd-gaps`` frame of its own or its own smaller code (ties: the frame). Raises
    :class:`~fedlora.wire.positions.PositionError`."""
    placed = place(items, range(len(items)))
    out = []
    for placement in placed.lists:
        if placement.encoding == "zstd-gaps":
            frame = placed.frames[placement.params["frame"]]
            out.append(P.Encoded("zstd-gaps", {}, frame))
        elif placement.encoding == "empty":
            out.append(P.Encoded("zstd-gaps", {}, b""))
        else:
            out.append(P.Encoded(placement.encoding, placement.params, placement.stream))
    return out


def encode_smallest(indices: np.ndarray, numel: int) -> P.Encoded:
    """Encode ``indices`` with whichever code is smallest for them."""
    return encode_smallest_many([(indices, numel)])[0]
