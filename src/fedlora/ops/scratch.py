"""Reusable working buffers for a server step that visits many layers of a few shapes.

A step over a whole model builds, per layer, dense copies of the clients' sparse deltas that it
reads once and drops. Allocating each afresh makes the operating system hand out and zero new
pages every time; writing the next one of the same shape into the buffer the last one used
costs one memset instead, and a buffer small enough stays in the cache between the two
(docs/performance.md has the measured differences). A :class:`Scratch` lives for one step,
owned by the caller, and a buffer it hands out is valid until the next request of the same
shape and dtype.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class Scratch:
    """Zeroed buffers keyed by shape and dtype, reused from one request to the next."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[tuple[int, ...], torch.dtype, torch.device], Tensor] = {}

    def zeros(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | None = None
    ) -> Tensor:
        """A zero tensor of ``shape``: the buffer of the last request of this shape, dtype
        and device, cleared (the caller must be done with that one), else a new one."""
        where = torch.device("cpu") if device is None else device
        slot = (tuple(shape), dtype, where)
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = self._buffers[slot] = torch.zeros(shape, dtype=dtype, device=where)
        else:
            buffer.zero_()
        return buffer

    @property
    def nbytes(self) -> int:
        """Bytes held across all buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())
