"""Encode payloads to bytes and decode them strictly.

``encode`` writes every entry faithfully (non-finite values included: refusing them is the
receiver's job). Dense tensors are sent as they are. The values of every
:class:`~fedlora.ops.sparse.Sparse` entry travel end to end in one stored tensor; its
positions travel in a ``zstd-gaps`` frame shared with the entries of its shape, or in a code
of its own when that is smaller (:mod:`fedlora.wire.framing`), or as only its seed when its
mask is a portable seeded mask (``mask_seed`` set; positions are
``seeded_keep_mask(seed, numel, keep_prob)``). An entry whose positions would cost more than
they save (nearly every entry present) is sent, and decodes, as a dense tensor. Values travel
as float32 unless ``value_dtype`` asks for bfloat16 / float16, and always decode to float32.
The byte layout is documented in :mod:`fedlora.wire.container`.

``decode`` validates everything before it returns anything: container structure, names,
shapes, entry kinds and dtypes (against ``expected`` when given), size limits, finiteness,
positions (in range, strictly increasing, count equal to the values) and, for seeded masks,
the regenerated count (:mod:`fedlora.wire.entries`, then :mod:`fedlora.wire.received`). A
:class:`~fedlora.ops.seeded_init.SeededInit` entry sends only its init rule and seed (no
values) and decodes to the same ``SeededInit``, rebuilt by the receiver. Any failure raises
:class:`~fedlora.errors.PayloadError` naming the tensor and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedlora.errors import PayloadError
from fedlora.methods.base import Payload
from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse
from fedlora.wire import container as ct
from fedlora.wire import framing, received
from fedlora.wire.entries import (
    Expected,
    _check_elements,
    _check_entry,
    _check_expected,
    _check_stored_keys,
    check_values,
)
from fedlora.wire.positions import (
    PositionError,
    best_low_bits,
    bitmap_bits,
    elias_fano_bits,
)
from fedlora.wire.stats import TensorStats, WireStats, count_nonzero

DEFAULT_MAX_BYTES = 1 << 30
"""Largest buffer ``decode`` accepts by default (1 GiB; a dense Llama-3.2-3B r=64 adapter is
371 MiB)."""

DEFAULT_MAX_ELEMENTS = 1 << 28
"""Largest total dense size (sum of ``numel``) of a decoded payload: seeded masks are tiny on
the wire but cost ``numel`` work and memory to regenerate."""

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- encode


def encode(
    payload: Mapping[str, torch.Tensor | Sparse | SeededInit], *, value_dtype: str = "float32"
) -> bytes:
    """Serialise ``payload`` (see :func:`encode_with_stats`)."""
    return encode_with_stats(payload, value_dtype=value_dtype)[0]


def encode_with_stats(
    payload: Mapping[str, torch.Tensor | Sparse | SeededInit], *, value_dtype: str = "float32"
) -> tuple[bytes, WireStats]:
    """Serialise ``payload`` and account for every byte.

    Parameters
    ----------
    payload : mapping of name -> dense float tensor or ``Sparse``
    value_dtype : "float32" (default), "bfloat16" or "float16": how values travel.

    Returns
    -------
    (bytes, WireStats) : the buffer and its per-entry accounting.

    Raises
    ------
    ValueError
        For payloads that cannot be valid on the wire (bad names, non-float tensors, sparse
        entries with inconsistent positions): these are sender bugs, not wire errors.
    """
    if value_dtype not in TORCH_DTYPES:
        raise ValueError(f"value_dtype must be one of {sorted(TORCH_DTYPES)}, got {value_dtype!r}")
    for name in payload:
        if not isinstance(name, str) or not name or ct.SEP in name:
            raise ValueError(f"payload name {name!r} must be a non-empty str without {ct.SEP!r}")
    tensors: dict[str, torch.Tensor | list[torch.Tensor]] = {}
    description: dict[str, dict[str, object]] = {}
    stats: dict[str, TensorStats] = {}
    sparse: dict[str, tuple[Sparse, torch.Tensor]] = {}
    for name in sorted(payload):
        entry = payload[name]
        if isinstance(entry, Sparse):
            values = _values(name, entry.values.reshape(-1), value_dtype)
            if values.numel() != entry.indices.numel():
                raise ValueError(
                    f"tensor {name!r}: {values.numel()} values for {entry.indices.numel()} positions"
                )
            if _cheaper_dense(entry, values):
                entry = entry.to_dense()
            else:
                sparse[name] = (entry, values)
                continue
        if isinstance(entry, SeededInit):
            description[name], stats[name] = _encode_seeded(name, entry, value_dtype)
        elif isinstance(entry, torch.Tensor):
            description[name], tensors[name], stats[name] = _encode_dense(name, entry, value_dtype)
        else:
            raise ValueError(f"tensor {name!r}: unsupported payload entry {type(entry).__name__}")
    _encode_sparse(sparse, value_dtype, tensors, description, stats)
    buf = ct.write(tensors, description)
    return buf, WireStats(len(buf), tuple(stats[name] for name in payload))


def _cheaper_dense(sparse: Sparse, values: torch.Tensor) -> bool:
    """Whether positions would cost more than they save (nearly every entry present): the
    smaller of a bitmap and an Elias-Fano code of them plus the values is no smaller than
    the dense tensor."""
    numel, nnz, size = sparse.numel, values.numel(), values.element_size()
    if nnz == 0 or sparse.mask_seed is not None or (numel + 7) // 8 + nnz * size < numel * size:
        return False  # (a bitmap already saves bytes)
    positions = min(bitmap_bits(numel), elias_fano_bits(numel, nnz, best_low_bits(numel, nnz)))
    return (positions + 7) // 8 + nnz * size >= numel * size


def _values(name: str, values: torch.Tensor, value_dtype: str) -> torch.Tensor:
    if not values.is_floating_point():
        raise ValueError(f"tensor {name!r}: values must be floating point, got {values.dtype}")
    dtype = TORCH_DTYPES[value_dtype]
    if values.dtype == dtype and values.device.type == "cpu" and not values.requires_grad:
        return values.contiguous()  # most entries: no conversion, and no call that costs one
    return values.detach().to("cpu", dtype).contiguous()


def _encode_dense(
    name: str, tensor: torch.Tensor, value_dtype: str
) -> tuple[dict[str, object], torch.Tensor, TensorStats]:
    values = _values(name, tensor, value_dtype)
    desc: dict[str, object] = {"kind": "dense", "shape": list(values.shape), "dtype": value_dtype}
    size = values.numel() * values.element_size()
    nonzero = count_nonzero(values)
    st = TensorStats(
        name, "dense", tuple(values.shape), values.numel(), nonzero, "dense", value_dtype, size, 0
    )
    return desc, values, st


def _encode_sparse(
    sparse: Mapping[str, tuple[Sparse, torch.Tensor]],
    value_dtype: str,
    tensors: dict[str, torch.Tensor | list[torch.Tensor]],
    description: dict[str, dict[str, object]],
    stats: dict[str, TensorStats],
) -> None:
    """The sparse entries (in name order): their values as one stored tensor, their
    positions as seeds, shared frames or codes of their own."""
    positions, frames = _place_positions(sparse)
    carriers = []
    for name, (entry, values) in sparse.items():
        where, pos_bytes, stream = positions.get(name, ({"encoding": "empty"}, 0, b""))
        if entry.mask_seed is not None:
            where = _seed_positions(name, entry)
        if where["encoding"] != "empty":
            carriers.append(values)
        if stream:
            tensors[ct.positions_key(name)] = _byte_tensor(stream)
        description[name] = {
            "kind": "sparse",
            "shape": list(entry.shape),
            "dtype": value_dtype,
            "nnz": values.numel(),
            "positions": where,
        }
        stats[name] = TensorStats(
            name,
            "sparse",
            tuple(entry.shape),
            values.numel(),
            count_nonzero(values),
            str(where["encoding"]),
            value_dtype,
            values.numel() * values.element_size(),
            pos_bytes,
        )
    if carriers:
        tensors[ct.VALUES_KEY] = carriers
    for f, frame in enumerate(frames):
        tensors[ct.frame_key(f)] = _byte_tensor(frame)


_Placed = dict[str, tuple[dict[str, object], int, bytes]]


def _place_positions(
    sparse: Mapping[str, tuple[Sparse, torch.Tensor]],
) -> tuple[_Placed, tuple[bytes, ...]]:
    """The positions of every sparse entry that sends them, placed together (entries of one
    shape share a frame): name -> (positions description, bytes charged, own stream), and
    the shared frames."""
    names = [n for n, (e, _) in sparse.items() if e.mask_seed is None and e.indices.numel()]
    items = [
        (
            _positions_of(sparse[n][0]),
            sparse[n][0].numel,
        )
        for n in names
    ]
    try:
        placed = framing.place(items, [tuple(sparse[n][0].shape) for n in names])
    except PositionError as exc:
        raise ValueError(f"tensor {names[exc.index]!r}: {exc}") from None
    out = {
        name: ({"encoding": where.encoding, **where.params}, where.charged, where.stream)
        for name, where in zip(names, placed.lists, strict=True)
    }
    return out, placed.frames


def _positions_of(sparse: Sparse) -> np.ndarray:
    indices = sparse.indices
    if indices.dtype != torch.int64 or indices.device.type != "cpu":
        indices = indices.detach().to("cpu", torch.int64)
    return indices.reshape(-1).numpy()


def _encode_seeded(
    name: str, init: SeededInit, value_dtype: str
) -> tuple[dict[str, object], TensorStats]:
    desc: dict[str, object] = {
        "kind": "seeded",
        "shape": list(init.shape),
        "dtype": value_dtype,
        "rule": init.rule,
        "seed": init.seed,
    }
    st = TensorStats(name, "seeded", tuple(init.shape), 0, 0, "seed-init", value_dtype, 0, 0)
    return desc, st


def _byte_tensor(data: bytes) -> torch.Tensor:
    # torch.frombuffer refuses an empty buffer.
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _seed_positions(name: str, sparse: Sparse) -> dict[str, object]:
    seed, keep = sparse.mask_seed, sparse.keep_prob
    if not isinstance(seed, int) or not 0 <= seed < 1 << 64 or keep is None:
        raise ValueError(
            f"tensor {name!r}: a seeded mask needs an int seed in [0, 2^64) and a keep_prob"
        )
    # Sending a seed whose mask differs from the positions would silently corrupt the
    # receiver, so the sender proves the match once here.
    indices = _positions_of(sparse)
    regen = np.flatnonzero(seeded_keep_mask(seed, sparse.numel, float(keep)).numpy())
    if not np.array_equal(regen, indices):
        raise ValueError(f"tensor {name!r}: positions are not the seeded mask of seed {seed}")
    return {"encoding": "seed", "seed": seed, "keep_prob": float(keep)}


# --------------------------------------------------------------------------- decode


def decode(
    buf: bytes | bytearray | memoryview,
    *,
    expected: Expected | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Payload:
    """Decode and fully validate a payload (see :func:`decode_with_stats`)."""
    return decode_with_stats(
        buf, expected=expected, max_bytes=max_bytes, max_elements=max_elements
    )[0]


def describe(
    buf: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> WireStats:
    """The accounting of a received buffer (it is fully validated on the way)."""
    return decode_with_stats(buf, max_bytes=max_bytes, max_elements=max_elements)[1]


def decode_with_stats(
    buf: bytes | bytearray | memoryview,
    *,
    expected: Expected | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[Payload, WireStats]:
    """Decode a buffer into a payload, validating everything first.

    Parameters
    ----------
    buf : the encoded payload.
    expected : name -> what the receiver accepts: a dense shape (any kind of entry), or an
        :class:`~fedlora.methods.base.EntrySpec` (a shape and the entry kinds allowed); when
        given, the payload must hold exactly these names, shapes and kinds.
    max_bytes : buffers longer than this are refused before parsing.
    max_elements : the payload's total dense size (sum of numel) may not exceed this.

    Returns
    -------
    (Payload, WireStats) : dense entries as float32 tensors, sparse entries as ``Sparse``
    (with ``mask_seed`` / ``keep_prob`` when sent as a seed), seeded inits as ``SeededInit``
    (rebuilt on use); nothing is returned unless
    every entry is valid.

    Raises
    ------
    PayloadError
        With a message naming the tensor (or "payload") and the problem.
    """
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload: expected bytes, got {type(buf).__name__}")
    data = bytes(buf)
    if len(data) > max_bytes:
        raise PayloadError(f"payload: {len(data)} bytes is above the limit of {max_bytes}")
    try:
        header = ct.read_header(data)
        specs = {
            name: _check_entry(name, d, header) for name, d in sorted(header.description.items())
        }
        check_values(specs, header)
        _check_stored_keys(specs, header)
        _check_expected(specs, expected)
        _check_elements(specs, max_elements)
        tensors = ct.load_tensors(data, header)
        received.check_finite(specs, tensors)
        positions = received.decode_positions(specs, tensors)
        decoded = received.decode_entries(specs, tensors, positions)
    except ct.ContainerError as exc:
        where = f"tensor {exc.tensor!r}" if exc.tensor is not None else "payload"
        raise PayloadError(f"{where}: {exc.problem}") from None
    payload: Payload = {name: entry for name, (entry, _) in decoded.items()}
    order = list(header.description)
    stats = WireStats(len(data), tuple(decoded[name][1] for name in order))
    return payload, stats
