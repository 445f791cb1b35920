"""The byte container of a payload: a safetensors buffer with a JSON description.

Layout (format ``fedlora-payload``, version 2). The buffer is a plain safetensors file, so
any safetensors reader can open it::

    [8 bytes: little-endian u64 header length H][H bytes: JSON header][tensor data]

Safetensors tensors:

- ``NAME`` for each dense entry, with the entry's shape and value dtype (F32, BF16 or F16);
- ``::values`` (1-D, the value dtype): the values of every sparse entry end to end, entries
  in the order of their names (sorted by code point), present when any sparse entry carries
  values (every encoding but ``empty``);
- ``::frame::F`` (1-D U8) for each shared ``zstd-gaps`` frame ``F`` (see
  :mod:`fedlora.wire.framing`): the positions of the sparse entries that name frame ``F``,
  in the order of their names;
- ``NAME::positions`` (1-D U8) for a sparse entry whose positions have a code of their own
  (``bitmap``, ``elias-fano`` or ``rice``; :mod:`fedlora.wire.positions`).

Header ``__metadata__`` (safetensors allows only str -> str there) holds one key,
``fedlora``, whose value is a JSON object::

    {"format": "fedlora-payload", "version": 2,
     "tensors": {NAME: {"kind": "dense" | "sparse" | "seeded",
                        "shape": [d0, d1, ...],          # the dense shape of the entry
                        "dtype": "float32" | "bfloat16" | "float16",
                        # sparse only:
                        "nnz": k,                        # number of values
                        "positions": {"encoding": "empty"}
                                   | {"encoding": "zstd-gaps", "frame": F}
                                   | {"encoding": "bitmap"}
                                   | {"encoding": "elias-fano", "low_bits": l}
                                   | {"encoding": "rice", "param": b}
                                   | {"encoding": "seed", "seed": s, "keep_prob": p},
                        # seeded only: "rule": r, "seed": s}}}

Payload names must not contain ``::`` (so no name collides with the shared tensors). Nothing
here is pickled; this module only moves bytes and checks the container's own structure. It
writes and reads the safetensors layout itself (the header is JSON; the data, each tensor's
bytes in a row, wider dtypes first so every tensor is aligned), because the library's
per-tensor overhead was most of a whole-model payload's time; the tests check that
``safetensors`` reads what it writes. Every check that can be made from the header (sizes,
offsets, declared shapes) is made before tensor data is touched, so a hostile header cannot
make the reader allocate more than the buffer it was given.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

FORMAT = "fedlora-payload"
VERSION = 2
META_KEY = "fedlora"
SEP = "::"
VALUES = "values"
POSITIONS = "positions"

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "U8": torch.uint8}
ST_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "U8": 1}
ST_CODES = {dtype: code for code, dtype in ST_DTYPES.items()}
VALUE_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
"""Value dtype name in the metadata -> safetensors dtype code."""


class ContainerError(ValueError):
    """The buffer is not a well-formed container; ``tensor`` names the entry, if any."""

    def __init__(self, tensor: str | None, problem: str) -> None:
        super().__init__(problem)
        self.tensor = tensor
        self.problem = problem


@dataclass(frozen=True)
class StoredTensor:
    """One safetensors entry as the header declares it."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """The parsed header: safetensors entries and the fedlora description."""

    stored: dict[str, StoredTensor]
    description: dict[str, Any]
    header_bytes: int


VALUES_KEY = f"{SEP}{VALUES}"
"""The stored tensor of every sparse entry's values."""


def frame_key(frame: int) -> str:
    return f"{SEP}frame{SEP}{frame}"


def positions_key(name: str) -> str:
    return f"{name}{SEP}{POSITIONS}"


def write(
    tensors: Mapping[str, torch.Tensor | Sequence[torch.Tensor]], description: dict[str, Any]
) -> bytes:
    """Serialise ``tensors`` and the fedlora ``description`` (the ``tensors`` map). A
    sequence of tensors of one dtype is stored as one 1-D tensor, their elements end to end
    (written straight from the parts, without a joined copy)."""
    meta = {"format": FORMAT, "version": VERSION, "tensors": description}
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True, allow_nan=False)
    header: dict[str, Any] = {"__metadata__": {META_KEY: text}}
    parts = {name: _byte_parts(name, value) for name, value in tensors.items()}
    order = sorted(parts, key=lambda name: (-parts[name][0].itemsize, name))
    chunks: list[Any] = []
    offset = 0
    for name in order:
        dtype, shape, data = parts[name]
        size = sum(chunk.size for chunk in data)
        header[name] = {
            "dtype": ST_CODES[dtype],
            "shape": shape,
            "data_offsets": [offset, offset + size],
        }
        chunks.extend(data)
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *chunks])


def _byte_parts(
    name: str, value: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[torch.dtype, list[int], list[np.ndarray]]:
    """A stored tensor's dtype, shape and bytes (one array per part)."""
    parts = [value] if isinstance(value, torch.Tensor) else list(value)
    dtypes = {part.dtype for part in parts}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ST_CODES:
        raise ValueError(f"tensor {name!r}: dtype(s) {sorted(map(str, dtypes))} cannot be stored")
    data = [_bytes_of(part) for part in parts]
    shape = (
        list(value.shape) if isinstance(value, torch.Tensor) else [sum(p.numel() for p in parts)]
    )
    return parts[0].dtype, shape, data


def _bytes_of(tensor: torch.Tensor) -> np.ndarray:
    if tensor.device.type != "cpu" or tensor.requires_grad or not tensor.is_contiguous():
        tensor = tensor.detach().cpu().contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_json(text: bytes | str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        # RecursionError: a deeply nested header must not escape as a crash.
        raise ContainerError(None, f"{what} is not valid JSON ({type(exc).__name__})") from None


def read_header(buf: bytes) -> Header:
    """Parse and check the safetensors header and the fedlora description.

    Checks: header length fits the buffer; every entry has a known dtype, a shape of
    non-negative integers and byte offsets that match ``dtype × shape`` and lie inside the
    buffer; entries tile the data section without gaps; the description has the right
    format and version. Raises :class:`ContainerError`.
    """
    if len(buf) < 8:
        raise ContainerError(None, f"buffer of {len(buf)} bytes is truncated (no header length)")
    (size,) = struct.unpack("<Q", buf[:8])
    if size > len(buf) - 8:
        raise ContainerError(None, f"header declares {size} bytes, buffer holds {len(buf) - 8}")
    raw = _parse_json(buf[8 : 8 + size], "safetensors header")
    if not isinstance(raw, dict):
        raise ContainerError(None, "safetensors header is not a JSON object")
    data_len = len(buf) - 8 - size
    meta = raw.pop("__metadata__", None)
    stored = {name: _stored(name, entry, data_len) for name, entry in raw.items()}
    spans = sorted((s.start, s.end, n) for n, s in stored.items())
    cursor = 0
    for start, end, name in spans:
        if start != cursor:
            raise ContainerError(name, f"data starts at byte {start}, expected {cursor}")
        cursor = end
    if cursor != data_len:
        raise ContainerError(None, f"data section is {data_len} bytes, tensors cover {cursor}")
    return Header(stored, _description(meta), 8 + size)


def _stored(name: str, entry: Any, data_len: int) -> StoredTensor:
    if not isinstance(entry, dict):
        raise ContainerError(name, "header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ST_DTYPES:
        raise ContainerError(name, f"unsupported stored dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_int(d) and d >= 0 for d in shape):
        raise ContainerError(name, f"shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ContainerError(name, f"data offsets {offsets!r} are malformed")
    numel = 1
    for d in shape:
        numel *= d
    if offsets[1] > data_len:
        raise ContainerError(
            name, f"data truncated: needs bytes up to {offsets[1]}, buffer has {data_len}"
        )
    if numel * ST_ITEMSIZE[dtype] != offsets[1] - offsets[0]:
        raise ContainerError(name, f"shape {shape} of {dtype} does not match its byte range")
    return StoredTensor(dtype, tuple(shape), offsets[0], offsets[1])


def _description(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or not isinstance(meta.get(META_KEY), str):
        raise ContainerError(None, f"header has no __metadata__.{META_KEY} description")
    desc = _parse_json(meta[META_KEY], "payload description")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ContainerError(None, f"description is not a {FORMAT} header")
    if desc.get("version") != VERSION:
        raise ContainerError(None, f"unsupported format version {desc.get('version')!r}")
    tensors = desc.get("tensors")
    if not isinstance(tensors, dict):
        raise ContainerError(None, "description has no tensors map")
    return tensors


def load_tensors(buf: bytes, header: Header) -> dict[str, torch.Tensor]:
    """The tensors of a buffer whose ``header`` :func:`read_header` has accepted.

    They view one private copy of the buffer (a tensor whose bytes are not aligned for its
    dtype gets its own copy), so decoding copies the data once.
    """
    if len(buf) == header.header_bytes:
        base = torch.zeros(0, dtype=torch.uint8)
    else:
        base = torch.frombuffer(bytearray(buf), dtype=torch.uint8)[header.header_bytes :]
    out: dict[str, torch.Tensor] = {}
    for name, stored in header.stored.items():
        data = base[stored.start : stored.end]
        if data.data_ptr() % ST_ITEMSIZE[stored.dtype]:
            data = data.clone()
        out[name] = data.view(ST_DTYPES[stored.dtype]).reshape(stored.shape)
    return out
