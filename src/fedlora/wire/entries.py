"""The checks a received payload's header passes before any tensor data is read: every
description entry's kind, shape, dtype, count and positions against the stored tensors, no
stored tensor undescribed, the receiver's expected names, shapes and kinds, and the size
limit. Each failure is a :class:`~fedlora.wire.container.ContainerError` naming the entry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeGuard

from fedlora.methods.base import EntrySpec
from fedlora.ops.seeded_init import INIT_RULES
from fedlora.wire import container as ct
from fedlora.wire.positions import MAX_NUMEL

ANY_KIND = frozenset({"dense", "sparse", "seeded"})

Expected = Mapping[str, "tuple[int, ...] | EntrySpec"]
"""What a receiver accepts, per entry name (see :func:`fedlora.wire.decode_with_stats`)."""


_Spec = tuple[str, tuple[int, ...], str, int, dict[str, object]]


def _fail(name: str, problem: str) -> ct.ContainerError:
    return ct.ContainerError(name, problem)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _check_entry(name: str, desc: object, header: ct.Header) -> _Spec:
    if not name or ct.SEP in name:
        raise _fail(name, f"invalid payload name (empty or containing {ct.SEP!r})")
    if not isinstance(desc, dict):
        raise _fail(name, "description entry is not an object")
    kind, shape, dtype = desc.get("kind"), desc.get("shape"), desc.get("dtype")
    if not isinstance(kind, str) or kind not in ("dense", "sparse", "seeded"):
        raise _fail(name, f"unknown kind {kind!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(name, f"shape {shape!r} is not a list of non-negative integers")
    shape_t = tuple(shape)
    if _numel(shape_t) > MAX_NUMEL:
        raise _fail(name, f"shape {list(shape_t)} has more than 2^31 elements")
    if not isinstance(dtype, str) or dtype not in ct.VALUE_DTYPES:
        raise _fail(name, f"dtype {dtype!r} is not one of {sorted(ct.VALUE_DTYPES)}")
    if kind == "dense":
        _check_stored(name, header, name, ct.VALUE_DTYPES[dtype], shape_t)
        return ("dense", shape_t, dtype, _numel(shape_t), {})
    if kind == "seeded":
        return ("seeded", shape_t, dtype, 0, _check_seeded(name, desc, shape_t))
    nnz, positions = desc.get("nnz"), desc.get("positions")
    if not _is_int(nnz) or not 0 <= nnz <= _numel(shape_t):
        raise _fail(name, f"nnz {nnz!r} is not an integer in [0, {_numel(shape_t)}]")
    if not isinstance(positions, dict) or not isinstance(positions.get("encoding"), str):
        raise _fail(name, "sparse entry has no positions description")
    if positions["encoding"] == "empty":
        if nnz != 0:
            raise _fail(name, f"an empty sparse entry declares {nnz} values")
        return ("sparse", shape_t, dtype, 0, positions)
    if positions["encoding"] == "seed":
        seed, keep = positions.get("seed"), positions.get("keep_prob")
        if not _is_int(seed) or not 0 <= seed < 1 << 64:
            raise _fail(name, f"mask seed {seed!r} is not an integer in [0, 2^64)")
        if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 <= keep <= 1.0:
            raise _fail(name, f"keep_prob {keep!r} is not a number in [0, 1]")
    elif positions["encoding"] == "zstd-gaps":
        frame = positions.get("frame")
        if not _is_int(frame) or not 0 <= frame < len(header.description):
            raise _fail(name, f"zstd-gaps frame {frame!r} is not an index below the entry count")
        if nnz == 0:
            raise _fail(name, "a zstd-gaps entry with no positions (send it as empty)")
        _check_stream(name, header, ct.frame_key(frame))
    else:
        _check_stream(name, header, ct.positions_key(name))
    return ("sparse", shape_t, dtype, nnz, positions)


def _check_seeded(name: str, desc: dict[str, object], shape: tuple[int, ...]) -> dict[str, object]:
    rule, seed = desc.get("rule"), desc.get("seed")
    if not isinstance(rule, str) or rule not in INIT_RULES:
        raise _fail(name, f"unknown init rule {rule!r}; known: {', '.join(INIT_RULES)}")
    if not _is_int(seed) or not 0 <= seed < 1 << 63:
        raise _fail(name, f"init seed {seed!r} is not an integer in [0, 2^63)")
    if len(shape) != 2 or shape[1] < 1:
        raise _fail(name, f"a seeded init must be 2-D (rank, in_features >= 1), got {list(shape)}")
    return {"rule": rule, "seed": seed}


def _check_stream(name: str, header: ct.Header, key: str) -> None:
    if key not in header.stored or header.stored[key].dtype != "U8":
        raise _fail(name, f"positions stream {key!r} missing or not bytes")
    if len(header.stored[key].shape) != 1:
        raise _fail(name, f"positions stream {key!r} is not 1-D")


def carries_values(spec: _Spec) -> bool:
    """Whether a checked entry's values are in the shared values tensor."""
    kind, _, _, _, positions = spec
    return kind == "sparse" and positions.get("encoding") != "empty"


def check_values(specs: Mapping[str, _Spec], header: ct.Header) -> int:
    """The shared values tensor holds exactly the sparse entries' values, in one dtype;
    returns how many."""
    carriers = [name for name, spec in specs.items() if carries_values(spec)]
    if not carriers:
        return 0
    dtypes = {specs[name][2] for name in carriers}
    if len(dtypes) != 1:
        raise _fail(carriers[0], f"sparse entries declare value dtypes {sorted(dtypes)}, not one")
    total = sum(specs[name][3] for name in carriers)
    _check_stored(carriers[0], header, ct.VALUES_KEY, ct.VALUE_DTYPES[dtypes.pop()], (total,))
    return total


def _check_stored(
    name: str, header: ct.Header, key: str, st_dtype: str, shape: tuple[int, ...]
) -> None:
    stored = header.stored.get(key)
    if stored is None:
        raise _fail(name, f"stored tensor {key!r} is missing")
    if stored.dtype != st_dtype:
        raise _fail(name, f"stored dtype {stored.dtype} does not match the declared {st_dtype}")
    if stored.shape != shape:
        raise _fail(name, f"stored shape {list(stored.shape)} does not match {list(shape)}")


def _check_stored_keys(specs: Mapping[str, _Spec], header: ct.Header) -> None:
    wanted: set[str] = set()
    for name, spec in specs.items():
        kind, _, _, _, positions = spec
        encoding = positions.get("encoding")
        if kind == "dense":
            wanted.add(name)
        elif carries_values(spec):
            wanted.add(ct.VALUES_KEY)
            if encoding == "zstd-gaps":
                wanted.add(ct.frame_key(int(str(positions["frame"]))))
            elif encoding != "seed":
                wanted.add(ct.positions_key(name))
    extra = sorted(set(header.stored) - wanted)
    if extra:
        raise _fail(extra[0], "stored tensor is not described in the payload header")


def _check_expected(specs: Mapping[str, _Spec], expected: Expected | None) -> None:
    if expected is None:
        return
    missing = sorted(set(expected) - set(specs))
    if missing:
        raise _fail(missing[0], "expected by the receiver but missing from the payload")
    unexpected = sorted(set(specs) - set(expected))
    if unexpected:
        raise _fail(unexpected[0], "not a tensor the receiver expects")
    for name, (kind, shape, _, _, _) in specs.items():
        want = expected[name]
        spec = want if isinstance(want, EntrySpec) else EntrySpec(tuple(want), ANY_KIND)
        if tuple(spec.shape) != shape:
            raise _fail(name, f"shape {list(shape)} does not match the expected {list(spec.shape)}")
        if kind not in spec.kinds:
            raise _fail(
                name, f"a {kind} entry where the receiver accepts {' or '.join(sorted(spec.kinds))}"
            )


def _check_elements(specs: Mapping[str, _Spec], max_elements: int) -> None:
    total = 0
    for name, (_, shape, _, _, _) in specs.items():
        total += _numel(shape)
        if total > max_elements:
            raise _fail(name, f"payload size exceeds the limit of {max_elements} elements")
