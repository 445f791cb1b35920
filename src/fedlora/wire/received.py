"""Received entries: what the checked header's entries of a buffer decode to.

Called by :func:`fedlora.wire.codec.decode_with_stats` once the header has passed every
check of :mod:`fedlora.wire.entries`: the finiteness of every value, the positions (codes of
their own one by one, each shared frame in one go), and each entry with its accounting.
Failures raise :class:`~fedlora.wire.container.ContainerError` naming the entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np
import torch

from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse
from fedlora.wire import container as ct
from fedlora.wire import framing
from fedlora.wire import gaps as zstd_gaps
from fedlora.wire.entries import _fail, _numel, _Spec, carries_values
from fedlora.wire.positions import PositionError, decode_many
from fedlora.wire.stats import TensorStats, count_nonzero


def check_finite(specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor]) -> None:
    """Every value is finite: one pass over each stored value tensor (its smallest and
    largest value, which NaN and infinities reach), and only when one fails, one per entry
    to name the first bad one."""
    keys = [name for name, spec in specs.items() if spec[0] == "dense"]
    if ct.VALUES_KEY in tensors:
        keys.append(ct.VALUES_KEY)
    if all(_finite(tensors[key]) for key in keys):
        return
    for name, values in _entry_values(specs, tensors, _shared_spans(specs)).items():
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            raise _fail(name, f"{int((~finite).sum())} non-finite value(s) (NaN or Inf)")


def _finite(values: torch.Tensor) -> bool:
    return not values.numel() or bool(torch.isfinite(torch.stack(torch.aminmax(values))).all())


def _shared_spans(specs: Mapping[str, _Spec]) -> dict[str, tuple[int, int]]:
    """Where each sparse entry's values lie in the shared values tensor: name -> (start,
    stop), entries in name order."""
    spans, offset = {}, 0
    for name, spec in specs.items():
        if carries_values(spec):
            spans[name] = (offset, offset + spec[3])
            offset += spec[3]
    return spans


def _entry_values(
    specs: Mapping[str, _Spec],
    tensors: Mapping[str, torch.Tensor],
    spans: Mapping[str, tuple[int, int]],
) -> dict[str, torch.Tensor]:
    """Every entry's stored values: dense tensors, and each sparse entry's slice (its span,
    from :func:`_shared_spans`) of the shared values tensor."""
    out = {name: tensors[name] for name, spec in specs.items() if spec[0] == "dense"}
    for name, (start, stop) in spans.items():
        out[name] = tensors[ct.VALUES_KEY][start:stop]
    return out


def decode_positions(
    specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor]
) -> dict[str, tuple[np.ndarray, int]]:
    """Every sent position list: name -> (positions, bytes charged to it). Codes of their
    own are decoded one by one, each shared frame in one go."""
    own: list[str] = []
    frames: dict[int, list[str]] = {}
    for name, (_, _, _, _, positions) in specs.items():
        encoding = positions.get("encoding")
        if encoding == "zstd-gaps":
            frames.setdefault(int(cast(int, positions["frame"])), []).append(name)
        elif encoding not in ("empty", "seed", None):
            own.append(name)
    out = _decode_own(specs, tensors, own)
    out.update(_decode_frames(specs, tensors, frames))
    return out


def _decode_own(
    specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor], names: list[str]
) -> dict[str, tuple[np.ndarray, int]]:
    streams = []
    for name in names:
        _, shape, _, nnz, positions = specs[name]
        stream = tensors[ct.positions_key(name)].numpy().tobytes()
        params = {k: v for k, v in positions.items() if k != "encoding"}
        streams.append((str(positions["encoding"]), params, stream, _numel(shape), nnz))
    try:
        decoded = decode_many(streams)
    except PositionError as exc:
        raise _fail(names[exc.index], f"bad positions ({streams[exc.index][0]}): {exc}") from None
    return {
        name: (idx, len(stream[2]))
        for name, idx, stream in zip(names, decoded, streams, strict=True)
    }


def _decode_frames(
    specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor], frames: dict[int, list[str]]
) -> dict[str, tuple[np.ndarray, int]]:
    """The shared frames' lists (each frame's entries in name order) with their shares."""
    order = sorted(frames)
    batch = [
        (
            tensors[ct.frame_key(f)].numpy().tobytes(),
            [_numel(specs[name][1]) for name in frames[f]],
            [specs[name][3] for name in frames[f]],
        )
        for f in order
    ]
    try:
        decoded = zstd_gaps.decode_frames(batch)
    except zstd_gaps.FrameError as exc:
        f, names = order[exc.frame], frames[order[exc.frame]]
        if exc.index is not None:
            raise _fail(names[exc.index], f"bad positions (zstd-gaps frame {f}): {exc}") from None
        where = f"zstd-gaps frame {f}, shared with {len(names) - 1} other tensor(s)"
        raise _fail(names[0], f"bad positions ({where}): {exc}") from None
    out: dict[str, tuple[np.ndarray, int]] = {}
    for f, (stream, _, nnzs), lists in zip(order, batch, decoded, strict=True):
        charged = framing.apportion(len(stream), np.asarray(nnzs, dtype=np.int64))
        out.update(zip(frames[f], zip(lists, charged, strict=True), strict=True))
    return out


def decode_entries(
    specs: Mapping[str, _Spec],
    tensors: Mapping[str, torch.Tensor],
    positions: Mapping[str, tuple[np.ndarray, int]],
) -> dict[str, tuple[torch.Tensor | Sparse | SeededInit, TensorStats]]:
    """Every entry with its accounting."""
    spans = _shared_spans(specs)
    values = _entry_values(specs, tensors, spans)
    nonzero = _nonzero_counts(specs, tensors, spans)
    return {
        name: _decode_entry(name, spec, values.get(name), nonzero.get(name, 0), positions.get(name))
        for name, spec in specs.items()
    }


def _nonzero_counts(
    specs: Mapping[str, _Spec],
    tensors: Mapping[str, torch.Tensor],
    spans: Mapping[str, tuple[int, int]],
) -> dict[str, int]:
    """Non-zero values per entry: each dense tensor counted alone; for the sparse entries,
    the zeros of the shared values tensor found in one pass and counted per entry."""
    counts = {
        name: count_nonzero(tensors[name]) for name, spec in specs.items() if spec[0] == "dense"
    }
    if spans:
        shared = tensors[ct.VALUES_KEY]
        if shared.dtype == torch.float32:
            zeros = np.flatnonzero(shared.numpy() == 0)
        else:
            zeros = torch.nonzero(shared == 0).reshape(-1).numpy()
        stops = np.fromiter((stop for _, stop in spans.values()), dtype=np.int64)
        per_entry = np.bincount(np.searchsorted(stops, zeros, side="right"), minlength=stops.size)
        for (name, (start, stop)), zero in zip(spans.items(), per_entry.tolist(), strict=True):
            counts[name] = stop - start - zero
    return counts


def _decode_entry(
    name: str,
    spec: _Spec,
    raw: torch.Tensor | None,
    nonzero: int,
    sent: tuple[np.ndarray, int] | None,
) -> tuple[torch.Tensor | Sparse | SeededInit, TensorStats]:
    """One checked entry from its stored values ``raw`` (None for an entry without values)
    and, for explicitly coded positions, its decoded positions and their bytes ``sent``."""
    kind, shape, dtype, nnz, positions = spec
    if kind == "seeded":
        rule, seed = str(positions["rule"]), int(cast(int, positions["seed"]))
        init = SeededInit((shape[0], shape[1]), seed, rule)
        return init, TensorStats(name, "seeded", shape, 0, 0, "seed-init", dtype, 0, 0)
    if raw is None:  # an empty sparse entry
        empty = Sparse(shape, torch.zeros(0, dtype=torch.int64), torch.zeros(0))
        return empty, TensorStats(name, "sparse", shape, 0, 0, "empty", dtype, 0, 0)
    values = raw if raw.dtype == torch.float32 else raw.to(torch.float32)
    value_bytes = raw.numel() * raw.element_size()
    if kind == "dense":
        st = TensorStats(name, "dense", shape, raw.numel(), nonzero, "dense", dtype, value_bytes, 0)
        return values, st
    encoding = str(positions["encoding"])
    if encoding == "seed":
        # Both were type-checked by _check_entry before decoding started.
        seed = int(cast(int, positions["seed"]))
        keep = float(cast(float, positions["keep_prob"]))
        idx = np.flatnonzero(seeded_keep_mask(seed, _numel(shape), keep).numpy())
        if idx.size != nnz:
            raise _fail(name, f"seeded mask keeps {idx.size} positions but {nnz} values were sent")
        entry = Sparse(shape, torch.from_numpy(idx.astype(np.int64)), values, seed, keep)
        pos_bytes = 0
    else:
        if sent is None:
            raise RuntimeError(f"tensor {name!r}: its positions were not decoded")
        idx, pos_bytes = sent
        entry = Sparse(shape, torch.from_numpy(idx), values)
    st = TensorStats(name, "sparse", shape, nnz, nonzero, encoding, dtype, value_bytes, pos_bytes)
    return entry, st
