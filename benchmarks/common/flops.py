"""Floating-point operation counts of a server step, and this machine's rate on the same
kernels at the same sizes (the roofline of ``python -m benchmarks.server``).

:class:`FlopCounter` sees every dense kernel torch dispatches while a step runs (matrix
products, QR, SVD, symmetric eigendecomposition) with its shapes, and counts it with the
standard operation counts (Golub & Van Loan, *Matrix Computations*, 4th ed.): ``2mkn`` for
an ``m×k`` by ``k×n`` product; Householder QR of an ``m×n`` matrix (``m ≥ n``) ``2mn² −
⅔n³`` for R alone and twice that with the thin Q; thin SVD with vectors ``6mn² + 20n³``;
symmetric eigendecomposition with vectors ``9n³``. Elementwise work is not counted. A
matrix product in float64 is its own kernel, ``matmul-f64``: it runs at a fraction of the
float32 rate (about a third on the 2-core CPU here), so its flops are timed at its own
measured rate. The machine's rate is measured on each kernel at the shape that cost the step
the most, so the achieved rate (counted flops / wall time) can be read against it.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _tall(m: int, n: int) -> tuple[int, int]:
    return (m, n) if m >= n else (n, m)


def _batch(a: torch.Tensor) -> int:
    """How many matrices a (possibly batched) factorisation's input holds."""
    count = 1
    for size in a.shape[:-2]:
        count *= size
    return count


_PRODUCTS = ("mm", "bmm", "addmm", "addmm_", "baddbmm", "baddbmm_", "addbmm", "addbmm_")
"""The matrix products counted: plain, with an added term, and their in-place forms."""


def kernel_flops(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, tuple[int, ...], float] | None:
    """``(kernel, shape, flops)`` of one dispatched op, or None if it is not counted."""
    if name in _PRODUCTS:
        a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
        batch = a.shape[0] if a.ndim == 3 else 1
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        kernel = "matmul-f64" if a.dtype == torch.float64 else "matmul"
        return kernel, (m, k, n), 2.0 * batch * m * k * n
    if name == "linalg_qr":
        a = args[0]
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "reduced")
        m, n = _tall(a.shape[-2], a.shape[-1])
        r_only = 2.0 * m * n * n - 2.0 * n**3 / 3
        return "qr", (m, n), _batch(a) * (r_only if mode == "r" else 2 * r_only)
    if name == "_linalg_svd":
        m, n = _tall(args[0].shape[-2], args[0].shape[-1])
        return "svd", (m, n), _batch(args[0]) * (6.0 * m * n * n + 20.0 * n**3)
    if name == "_linalg_eigh":
        n = args[0].shape[-1]
        return "eigh", (n,), _batch(args[0]) * 9.0 * n**3
    return None


@dataclass
class FlopCounter(TorchDispatchMode):
    """Counts flops of dense kernels while active (``with FlopCounter() as f: ...``)."""

    total: float = 0.0
    by_kernel: dict[tuple[str, tuple[int, ...]], float] = field(
        default_factory=lambda: defaultdict(float)
    )

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        counted = kernel_flops(func.overloadpacket.__name__, tuple(args), dict(kwargs or {}))
        if counted is not None:
            kernel, shape, flops = counted
            self.total += flops
            self.by_kernel[(kernel, shape)] += flops
        return func(*args, **(kwargs or {}))

    def heaviest(self, kernel: str) -> tuple[int, ...] | None:
        """The shape of ``kernel`` that cost the most flops in total."""
        shapes = {s: f for (k, s), f in self.by_kernel.items() if k == kernel}
        return max(shapes, key=lambda s: shapes[s]) if shapes else None


def count_flops(step: Callable[[], Any]) -> FlopCounter:
    """Run ``step`` once under a :class:`FlopCounter` (untimed)."""
    with FlopCounter() as counter:
        step()
    return counter


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 5) -> float:
    def finished() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    finished()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        finished()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


CPU = torch.device("cpu")


def machine_rates(
    counter: FlopCounter, device: torch.device = CPU, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """GFLOP/s of ``device`` on the matrix product (in ``dtype``, and in float64 where the
    step has float64 products) and the R-only QR (float32) at the shapes that cost
    ``counter``'s step the most (on the CPU, torch's threads)."""
    gen = torch.Generator().manual_seed(0)
    rates: dict[str, float] = {}
    for kernel, kind in (("matmul", dtype), ("matmul-f64", torch.float64)):
        mm = counter.heaviest(kernel)
        if mm is None:
            continue
        m, k, n = mm
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=kind)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=kind)
        product = functools.partial(torch.matmul, a, b)
        rates[kernel] = 2.0 * m * k * n / _median_seconds(product, device) / 1e9
    qr = counter.heaviest("qr")
    if qr is None:  # a step that factorises by SVD or eigh only: its rate at that size
        square = counter.heaviest("svd") or counter.heaviest("eigh")
        qr = (square[0], square[-1]) if square is not None else None
    if qr is not None:
        m, n = qr
        x = torch.randn(m, n, generator=gen).to(device)
        flops = 2.0 * m * n * n - 2.0 * n**3 / 3
        seconds = _median_seconds(lambda: torch.linalg.qr(x, mode="r"), device)
        rates["qr"] = flops / seconds / 1e9
    return rates


def roofline_seconds(counter: FlopCounter, rates: dict[str, float]) -> float | None:
    """The time the counted flops take at the measured kernel rates (GFLOP/s): matrix
    products at the matmul rate of their precision, factorisations (QR, SVD, eigh) at the QR
    rate; None when a rate the step needs was not measured."""
    by_kind: dict[str, float] = defaultdict(float)
    for (kernel, _), flops in counter.by_kernel.items():
        by_kind[kernel if kernel.startswith("matmul") else "qr"] += flops
    if any(kind not in rates for kind, flops in by_kind.items() if flops > 0):
        return None
    return sum(flops / (rates[kind] * 1e9) for kind, flops in by_kind.items())
