"""Peak extra memory of one call: live tensor bytes seen by torch's dispatcher, and peak RSS.

``tracemalloc`` does not see torch's allocations, so two other probes are used:

- :class:`TensorMemoryTracker`, a ``TorchDispatchMode`` that counts the bytes of every new
  tensor storage an op returns while the call runs and subtracts them when the storage dies
  (``weakref.finalize`` on the storage, whose Python object torch keeps alive as long as any
  tensor uses it). Its peak is the high-water mark of tensors *created by the call*; inputs and
  views of inputs are not counted. It also records every created 2-D shape, so a caller can see
  whether an ``m×n`` matrix of some layer was ever formed. Blind spots: scratch memory inside a
  single kernel (e.g. LAPACK workspaces) and tensors made outside torch (``torch.from_numpy``).
- The kernel's resident-set high-water mark (``VmHWM``), reset before the call through
  ``/proc/self/clear_refs`` (Linux). It sees everything, kernel workspaces included, but
  memory the allocator reuses without asking the OS is invisible to it, and it is ``None``
  where the reset is not allowed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

T = TypeVar("T")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class _Counter:
    """Mutable totals shared with the storages' finalizers (which must not hold the mode)."""

    live: int = 0
    peak: int = 0

    def add(self, nbytes: int) -> None:
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def sub(self, nbytes: int) -> None:
        self.live -= nbytes


@dataclass(frozen=True)
class MemoryUse:
    """What one call allocated.

    ``peak_tensor_bytes``: high-water mark of live tensors created by the call;
    ``largest_tensor_bytes`` / ``largest_shape``: the biggest single tensor it created;
    ``dense_shapes``: created 2-D shapes that are in the watch list (e.g. a layer's m×n);
    ``peak_rss_bytes``: rise of the resident-set high-water mark over the RSS before the call,
    ``None`` when the kernel does not allow resetting it.
    """

    peak_tensor_bytes: int
    largest_tensor_bytes: int
    largest_shape: tuple[int, ...]
    dense_shapes: tuple[tuple[int, int], ...]
    peak_rss_bytes: int | None


class TensorMemoryTracker(TorchDispatchMode):
    """Counts bytes of tensor storages created while active (see module docstring).

    Parameters
    ----------
    watch : 2-D shapes to report if any op creates a tensor of exactly that shape.
    """

    def __init__(self, watch: Iterable[tuple[int, int]] = ()) -> None:
        super().__init__()
        self.counter = _Counter()
        self.watch = frozenset(watch)
        self.hits: set[tuple[int, int]] = set()
        self.largest_bytes = 0
        self.largest_shape: tuple[int, ...] = ()
        self._tracked: dict[int, Any] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(a.untyped_storage())
            for a in tree_flatten((args, kwargs or {}))[0]
            if isinstance(a, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        shape = tuple(t.shape)
        if len(shape) == 2 and shape in self.watch:
            self.hits.add((shape[0], shape[1]))
        storage = t.untyped_storage()
        sid = id(storage)
        # A view or in-place result lives in an input's storage: no new memory.
        if sid in inputs or sid in self._tracked:
            return
        nbytes = storage.nbytes()
        if nbytes > self.largest_bytes:
            self.largest_bytes, self.largest_shape = nbytes, shape
        self.counter.add(nbytes)
        counter, tracked = self.counter, self._tracked

        def release(sid: int = sid, nbytes: int = nbytes) -> None:
            counter.sub(nbytes)
            tracked.pop(sid, None)

        self._tracked[sid] = weakref.finalize(storage, release)

    def detach_finalizers(self) -> None:
        """Stop counting: storages still alive after the call no longer report to us."""
        for fin in list(self._tracked.values()):
            fin.detach()
        self._tracked.clear()


def _status_kib(field_name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measured:
    """The result of :func:`measure` and the call's return value."""

    use: MemoryUse
    value: Any = field(default=None)


def measure(fn: Callable[[], T], watch: Iterable[tuple[int, int]] = ()) -> Measured:
    """Run ``fn()`` once under both probes and report its memory use.

    Parameters
    ----------
    fn : the call to measure (its return value is kept alive until the peak is read, so
        memory the result holds counts as extra memory, as it would in a real round).
    watch : 2-D shapes whose creation is reported (see :class:`MemoryUse`).

    Notes
    -----
    The garbage collector is not run first: only storages created by the call are counted,
    and garbage freed during the call can only lower the RSS, never its high-water mark.
    The first use of a dispatch mode imports part of ``torch._dynamo`` (seconds); call
    :func:`warm_up` before timing anything that includes a measurement.
    """
    rss_before = _status_kib("VmRSS")
    can_reset = _reset_peak_rss()
    tracker = TensorMemoryTracker(watch)
    with tracker:
        value = fn()
    hwm = _status_kib("VmHWM")
    tracker.detach_finalizers()
    peak_rss = None
    if can_reset and rss_before is not None and hwm is not None:
        peak_rss = max(0, hwm - rss_before) * 1024
    use = MemoryUse(
        peak_tensor_bytes=tracker.counter.peak,
        largest_tensor_bytes=tracker.largest_bytes,
        largest_shape=tracker.largest_shape,
        dense_shapes=tuple(sorted(tracker.hits)),
        peak_rss_bytes=peak_rss,
    )
    return Measured(use=use, value=value)


def warm_up() -> None:
    """Pay the one-time import cost of torch's dispatch-mode machinery now."""
    measure(lambda: torch.zeros(1))
