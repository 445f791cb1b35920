"""Encode payloads to bytes and decode them strictly.

``encode`` writes every entry faithfully (non-finite values included: refusing them is the
receiver's job). Dense tensors are sent as they are; a :class:`~fedlora.ops.sparse.Sparse`
entry sends its values plus its positions in the smallest of the position codes of
:mod:`fedlora.wire.positions`, or only its seed when its mask is a portable seeded mask
(``mask_seed`` set; positions are ``seeded_keep_mask(seed, numel, keep_prob)``); one whose
positions would cost more than they save (nearly every entry present) is sent, and decodes,
as a dense tensor. Values
travel as float32 unless ``value_dtype`` asks for bfloat16 / float16, and always decode to
float32. The byte layout is documented in :mod:`fedlora.wire.container`.

``decode`` validates everything before it returns anything: container structure, names,
shapes, entry kinds and dtypes (against ``expected`` when given), size limits, finiteness, positions
(in range, strictly increasing, count equal to the values) and, for seeded masks, the
regenerated count. A :class:`~fedlora.ops.seeded_init.SeededInit` entry sends only its init
rule and seed (no values) and decodes to the same ``SeededInit``, rebuilt by the receiver.
Any failure raises :class:`~fedlora.errors.PayloadError` naming the
tensor and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard, cast

import numpy as np
import torch

from fedlora.errors import PayloadError
from fedlora.methods.base import Payload
from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse
from fedlora.wire import container as ct
from fedlora.wire.entries import (
    Expected,
    _check_elements,
    _check_entry,
    _check_expected,
    _check_stored_keys,
    _fail,
    _numel,
    _Spec,
)
from fedlora.wire.positions import (
    Encoded,
    PositionError,
    decode_many,
    encode_smallest_many,
)
from fedlora.wire.stats import TensorStats, WireStats

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
    tensors: dict[str, torch.Tensor] = {}
    description: dict[str, dict[str, object]] = {}
    stats: list[TensorStats] = []
    for name in payload:
        if not isinstance(name, str) or not name or ct.SEP in name:
            raise ValueError(f"payload name {name!r} must be a non-empty str without {ct.SEP!r}")
    codes = _position_codes(payload)
    for name, entry in payload.items():
        if isinstance(entry, Sparse):
            desc, stored, st = _encode_sparse(name, entry, value_dtype, codes.get(name))
        elif isinstance(entry, SeededInit):
            desc, stored, st = _encode_seeded(name, entry, value_dtype)
        elif isinstance(entry, torch.Tensor):
            desc, stored, st = _encode_dense(name, entry, value_dtype)
        else:
            raise ValueError(f"tensor {name!r}: unsupported payload entry {type(entry).__name__}")
        description[name] = desc
        tensors.update(stored)
        stats.append(st)
    buf = ct.write(tensors, description)
    return buf, WireStats(len(buf), tuple(stats))


def _sends_positions(entry: object) -> TypeGuard[Sparse]:
    return isinstance(entry, Sparse) and entry.mask_seed is None and entry.indices.numel() > 0


def _position_codes(payload: Mapping[str, object]) -> dict[str, Encoded]:
    """The smallest position code of every sparse entry that sends positions, made in one
    batch for the whole payload."""
    names = [name for name, entry in payload.items() if _sends_positions(entry)]
    items = []
    for name in names:
        sparse = cast(Sparse, payload[name])
        items.append(
            (sparse.indices.detach().cpu().reshape(-1).to(torch.int64).numpy(), sparse.numel)
        )
    try:
        codes = encode_smallest_many(items)
    except PositionError as exc:
        raise ValueError(f"tensor {names[exc.index]!r}: {exc}") from None
    return dict(zip(names, codes, strict=True))


def _values(name: str, values: torch.Tensor, value_dtype: str) -> torch.Tensor:
    if not values.is_floating_point():
        raise ValueError(f"tensor {name!r}: values must be floating point, got {values.dtype}")
    return values.detach().to("cpu", TORCH_DTYPES[value_dtype]).contiguous()


def _encode_dense(
    name: str, tensor: torch.Tensor, value_dtype: str
) -> tuple[dict[str, object], dict[str, torch.Tensor], TensorStats]:
    values = _values(name, tensor, value_dtype)
    desc: dict[str, object] = {"kind": "dense", "shape": list(values.shape), "dtype": value_dtype}
    st = TensorStats(
        name,
        "dense",
        tuple(values.shape),
        values.numel(),
        int(torch.count_nonzero(values)),
        "dense",
        value_dtype,
        values.numel() * values.element_size(),
        0,
    )
    return desc, {name: values}, st


def _encode_sparse(
    name: str, sparse: Sparse, value_dtype: str, enc: Encoded | None
) -> tuple[dict[str, object], dict[str, torch.Tensor], TensorStats]:
    numel = sparse.numel
    indices = sparse.indices.detach().cpu().reshape(-1).to(torch.int64).numpy()
    values = _values(name, sparse.values.reshape(-1), value_dtype)
    if values.numel() != indices.size:
        raise ValueError(f"tensor {name!r}: {values.numel()} values for {indices.size} positions")
    stored = {ct.values_key(name): values}
    positions: dict[str, object]
    if indices.size == 0 and sparse.mask_seed is None:
        # The zero tensor (B = 0 of a fresh adapter): no values, no positions, no streams.
        stored, positions, pos_bytes = {}, {"encoding": "empty"}, 0
    elif sparse.mask_seed is not None:
        positions = _seed_positions(name, sparse, indices)
        pos_bytes = 0
    else:
        if enc is None:
            raise RuntimeError(f"tensor {name!r}: no position code was made for it")
        if len(enc.data) + values.numel() * values.element_size() >= numel * values.element_size():
            # Nearly every entry is present: the positions cost more than they save.
            return _encode_dense(name, sparse.to_dense(), value_dtype)
        positions = {"encoding": enc.encoding, **enc.params}
        stored[ct.positions_key(name)] = _byte_tensor(enc.data)
        pos_bytes = len(enc.data)
    desc = {
        "kind": "sparse",
        "shape": list(sparse.shape),
        "dtype": value_dtype,
        "nnz": int(indices.size),
        "positions": positions,
    }
    st = TensorStats(
        name,
        "sparse",
        tuple(sparse.shape),
        int(indices.size),
        int(torch.count_nonzero(values)),
        str(positions["encoding"]),
        value_dtype,
        values.numel() * values.element_size(),
        pos_bytes,
    )
    return desc, stored, st


def _encode_seeded(
    name: str, init: SeededInit, value_dtype: str
) -> tuple[dict[str, object], dict[str, torch.Tensor], TensorStats]:
    desc: dict[str, object] = {
        "kind": "seeded",
        "shape": list(init.shape),
        "dtype": value_dtype,
        "rule": init.rule,
        "seed": init.seed,
    }
    st = TensorStats(name, "seeded", tuple(init.shape), 0, 0, "seed-init", value_dtype, 0, 0)
    return desc, {}, st


def _byte_tensor(data: bytes) -> torch.Tensor:
    # torch.frombuffer refuses an empty buffer (a sparse entry with no values).
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _seed_positions(name: str, sparse: Sparse, indices: np.ndarray) -> dict[str, object]:
    seed, keep = sparse.mask_seed, sparse.keep_prob
    if not isinstance(seed, int) or not 0 <= seed < 1 << 64 or keep is None:
        raise ValueError(
            f"tensor {name!r}: a seeded mask needs an int seed in [0, 2^64) and a keep_prob"
        )
    # Sending a seed whose mask differs from the positions would silently corrupt the
    # receiver, so the sender proves the match once here.
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
        specs = {name: _check_entry(name, d, header) for name, d in header.description.items()}
        _check_stored_keys(specs, header)
        _check_expected(specs, expected)
        _check_elements(specs, max_elements)
        tensors = ct.load_tensors(data, header)
        _check_finite(specs, tensors)
        positions = _decode_positions(specs, tensors)
        decoded = {
            name: _decode_entry(name, spec, tensors, positions.get(name))
            for name, spec in specs.items()
        }
    except ct.ContainerError as exc:
        where = f"tensor {exc.tensor!r}" if exc.tensor is not None else "payload"
        raise PayloadError(f"{where}: {exc.problem}") from None
    payload: Payload = {name: entry for name, (entry, _) in decoded.items()}
    stats = WireStats(len(data), tuple(st for _, st in decoded.values()))
    return payload, stats


# A validated description entry: (kind, shape, dtype, nnz, positions-dict).
def _value_key(name: str, spec: _Spec) -> str | None:
    kind, _, _, _, positions = spec
    if kind == "dense":
        return name
    if kind == "sparse" and positions.get("encoding") != "empty":
        return ct.values_key(name)
    return None


def _check_finite(specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor]) -> None:
    """Every value is finite: one pass per value dtype over all entries (the smallest and
    largest value, which NaN and infinities reach), and only when it fails, one per entry to
    name the first bad one."""
    keys = {name: key for name, spec in specs.items() if (key := _value_key(name, spec))}
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for key in keys.values():
        if tensors[key].numel():
            by_dtype.setdefault(tensors[key].dtype, []).append(tensors[key].reshape(-1))
    if all(
        bool(torch.isfinite(torch.stack(torch.aminmax(torch.cat(group)))).all())
        for group in by_dtype.values()
    ):
        return
    for name, key in keys.items():
        finite = torch.isfinite(tensors[key])
        if not bool(finite.all()):
            raise _fail(name, f"{int((~finite).sum())} non-finite value(s) (NaN or Inf)")


def _decode_positions(
    specs: Mapping[str, _Spec], tensors: Mapping[str, torch.Tensor]
) -> dict[str, tuple[np.ndarray, int]]:
    """Every sent position stream decoded in one batch: name -> (positions, stream bytes)."""
    names, streams = [], []
    for name, (kind, shape, _, nnz, positions) in specs.items():
        encoding = positions.get("encoding")
        if kind != "sparse" or encoding in ("empty", "seed"):
            continue
        stream = tensors[ct.positions_key(name)].numpy().tobytes()
        params = {k: v for k, v in positions.items() if k != "encoding"}
        names.append(name)
        streams.append((str(encoding), params, stream, _numel(shape), nnz))
    try:
        decoded = decode_many(streams)
    except PositionError as exc:
        name = names[exc.index]
        raise _fail(name, f"bad positions ({streams[exc.index][0]}): {exc}") from None
    return {
        name: (idx, len(stream[2]))
        for name, idx, stream in zip(names, decoded, streams, strict=True)
    }


def _decode_entry(
    name: str, spec: _Spec, tensors: Mapping[str, torch.Tensor], sent: tuple[np.ndarray, int] | None
) -> tuple[torch.Tensor | Sparse | SeededInit, TensorStats]:
    kind, shape, dtype, nnz, positions = spec
    if kind == "seeded":
        rule, seed = str(positions["rule"]), int(cast(int, positions["seed"]))
        init = SeededInit((shape[0], shape[1]), seed, rule)
        return init, TensorStats(name, "seeded", shape, 0, 0, "seed-init", dtype, 0, 0)
    if kind == "sparse" and positions["encoding"] == "empty":
        empty = Sparse(shape, torch.zeros(0, dtype=torch.int64), torch.zeros(0))
        return empty, TensorStats(name, "sparse", shape, 0, 0, "empty", dtype, 0, 0)
    raw = tensors[name if kind == "dense" else ct.values_key(name)]
    stored_shape = shape if kind == "dense" else (nnz,)
    if raw.dtype != TORCH_DTYPES[dtype] or tuple(raw.shape) != stored_shape:
        raise _fail(name, "stored tensor disagrees with its header entry")
    values = raw.to(torch.float32)
    value_bytes = raw.numel() * raw.element_size()
    nonzero = int(torch.count_nonzero(raw))
    if kind == "dense":
        st = TensorStats(name, "dense", shape, raw.numel(), nonzero, "dense", dtype, value_bytes, 0)
        return values, st
    encoding = str(positions["encoding"])
    numel = _numel(shape)
    if encoding == "seed":
        # Both were type-checked by _check_entry before decoding started.
        seed = int(cast(int, positions["seed"]))
        keep = float(cast(float, positions["keep_prob"]))
        idx = np.flatnonzero(seeded_keep_mask(seed, numel, keep).numpy())
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
