"""The byte container of a payload: a safetensors buffer with a JSON description.

Layout (format ``fedlora-payload``, version 1). The buffer is a plain safetensors file, so
any safetensors reader can open it::

    [8 bytes: little-endian u64 header length H][H bytes: JSON header][tensor data]

Safetensors tensors, for each payload entry ``NAME``:

- dense entry: tensor ``NAME`` with the entry's shape and value dtype (F32, BF16 or F16);
- sparse entry: tensor ``NAME::values`` (1-D, one value per kept position, value dtype) and,
  unless the positions are sent as a seed, tensor ``NAME::positions`` (1-D U8: the position
  stream of :mod:`fedlora.wire.positions`).

Header ``__metadata__`` (safetensors allows only str -> str there) holds one key,
``fedlora``, whose value is a JSON object::

    {"format": "fedlora-payload", "version": 1,
     "tensors": {NAME: {"kind": "dense" | "sparse",
                        "shape": [d0, d1, ...],          # the dense shape of the entry
                        "dtype": "float32" | "bfloat16" | "float16",
                        # sparse only:
                        "nnz": k,                        # number of values
                        "positions": {"encoding": "bitmap"}
                                   | {"encoding": "elias-fano", "low_bits": l}
                                   | {"encoding": "rice", "param": b}
                                   | {"encoding": "zstd-gaps"}
                                   | {"encoding": "seed", "seed": s, "keep_prob": p}}}}

Payload names must not contain ``::``. Nothing here is pickled; this module only moves
bytes and checks the container's own structure. It writes and reads the safetensors layout
itself (the header is JSON; the data, each tensor's bytes in a row, wider dtypes first so every
tensor is aligned), because the library's per-tensor overhead was most of a whole-model
payload's time; the tests check that ``safetensors`` reads what it writes. Every check that can be made from the
header (sizes, offsets, declared shapes) is made before tensor data is touched, so a hostile
header cannot make the reader allocate more than the buffer it was given.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import torch

FORMAT = "fedlora-payload"
VERSION = 1
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


def values_key(name: str) -> str:
    return f"{name}{SEP}{VALUES}"


def positions_key(name: str) -> str:
    return f"{name}{SEP}{POSITIONS}"


def write(tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> bytes:
    """Serialise ``tensors`` and the fedlora ``description`` (the ``tensors`` map)."""
    meta = {"format": FORMAT, "version": VERSION, "tensors": description}
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True, allow_nan=False)
    header: dict[str, Any] = {"__metadata__": {META_KEY: text}}
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    chunks: list[Any] = []
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in ST_CODES:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        header[name] = {
            "dtype": ST_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.size],
        }
        chunks.append(data)
        offset += data.size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *chunks])


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
