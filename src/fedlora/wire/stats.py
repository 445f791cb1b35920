"""Byte and parameter accounting of one encoded payload (what run metrics record)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlora.wire.positions import information_bound_bits

VALUE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}


@dataclass(frozen=True)
class TensorStats:
    """One payload entry on the wire.

    ``values`` is the number of values sent (``numel`` for dense entries, ``nnz`` for
    sparse ones, 0 for a seeded init); ``nonzero`` counts those values that are not zero;
    ``encoding`` is ``"dense"``, ``"seed-init"`` (a tensor sent as its init rule and seed) or
    the position code (``bitmap``, ``elias-fano``, ``rice``, ``zstd-gaps``, ``seed``,
    ``empty``); ``position_bytes`` is its own stream's size, or for an entry in a shared
    ``zstd-gaps`` frame its share of the frame by positions (a frame's shares sum to it).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    values: int
    nonzero: int
    encoding: str
    value_dtype: str
    value_bytes: int
    position_bytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def group(self) -> str:
        """The tensor's kind within its layer: the last dotted part of its name ("A", "B")."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def bound_bits(self) -> float:
        """Information bound of this entry: ``log2 C(numel, values)`` for explicitly coded
        positions (zero for dense entries and seeded masks) plus the values' bits."""
        value_bits = self.values * VALUE_BITS[self.value_dtype]
        if self.kind in ("dense", "seeded") or self.encoding == "seed":
            return float(value_bits)
        return information_bound_bits(self.numel, self.values) + value_bits

    @property
    def bound_ratio(self) -> float:
        """Bytes spent (values + positions) over the information bound; 1.0 when both are 0."""
        bound = self.bound_bits
        spent = 8 * (self.value_bytes + self.position_bytes)
        return spent / bound if bound > 0 else 1.0


@dataclass(frozen=True)
class WireStats:
    """All entries of one payload and its exact encoded size."""

    total_bytes: int
    tensors: tuple[TensorStats, ...]

    @property
    def values(self) -> int:
        return sum(t.values for t in self.tensors)

    @property
    def nonzero(self) -> int:
        return sum(t.nonzero for t in self.tensors)

    @property
    def value_bytes(self) -> int:
        return sum(t.value_bytes for t in self.tensors)

    @property
    def position_bytes(self) -> int:
        return sum(t.position_bytes for t in self.tensors)

    @property
    def overhead_bytes(self) -> int:
        """Container header and alignment: everything that is neither values nor positions."""
        return self.total_bytes - self.value_bytes - self.position_bytes

    @property
    def value_dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({t.value_dtype for t in self.tensors}))

    def encodings(self) -> dict[str, dict[str, int]]:
        """How many entries of each group ("A", "B", ...) used each encoding."""
        out: dict[str, Counter[str]] = {}
        for t in self.tensors:
            out.setdefault(t.group, Counter())[t.encoding] += 1
        return {g: dict(sorted(c.items())) for g, c in sorted(out.items())}

    def sparse_bound_ratio(self) -> float | None:
        """Spent bits over the information bound, summed over sparse entries (None if none)."""
        sparse = [t for t in self.tensors if t.kind == "sparse"]
        if not sparse:
            return None
        bound = sum(t.bound_bits for t in sparse)
        spent = 8 * sum(t.value_bytes + t.position_bytes for t in sparse)
        return spent / bound if bound > 0 else 1.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for run metrics."""
        return {
            "bytes": self.total_bytes,
            "values": self.values,
            "nonzero": self.nonzero,
            "value_bytes": self.value_bytes,
            "position_bytes": self.position_bytes,
            "overhead_bytes": self.overhead_bytes,
            "value_dtypes": list(self.value_dtypes),
            "encodings": self.encodings(),
            "sparse_bound_ratio": self.sparse_bound_ratio(),
        }


def count_nonzero(values: torch.Tensor) -> int:
    """How many of ``values`` are not zero (a CPU tensor)."""
    # numpy's count costs a small fraction of torch's per call, and a payload has hundreds.
    if values.dtype == torch.float32:
        return int(np.count_nonzero(values.numpy() != 0))  # a bool count is the fast one
    return int(torch.count_nonzero(values))
