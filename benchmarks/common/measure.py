"""Measurement helpers shared by the benchmarks: a stopwatch, the machine's load, thread
choice, units and plain-text tables."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedlora.errors import ConfigError

MIB = 2**20


class Stopwatch:
    """Accumulates wall seconds per name; wrapped callables add to it on every call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(name):
                return fn(*args, **kwargs)

        return timed

    def get(self, name: str) -> float:
        return self.seconds.get(name, 0.0)

    def __call__(self, phase: str) -> contextlib.AbstractContextManager[None]:
        """The stopwatch as the client round's timing hook (:mod:`fedlora.train.timing`)."""
        return self.time(phase)


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (NaN where the system has none): timings on a busy
    2-core machine are not worth much, so every benchmark reports them."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def choose_threads(requested: int | None) -> tuple[int, str]:
    """Torch threads for the run, and why.

    All cores help only when they are free: on a machine whose run queue already exceeds its
    cores, each extra intra-op thread mostly waits for a descheduled sibling at every
    barrier (benchmarks/README.md gives the figures). So the default is every core unless
    the 1-minute load average is at least the core count, then one thread.
    """
    cores = os.cpu_count() or 1
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads must be >= 1, got {requested}")
        return requested, "requested"
    load = load_average()[0]
    if cores > 1 and load >= cores:
        return 1, f"load average {load:.1f} >= {cores} cores: one thread avoids barrier stalls"
    return cores, "all cores"


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{seconds * 1e3:.1f}"


def mib(nbytes: int) -> str:
    """Bytes as whole MiB."""
    return f"{nbytes / MIB:.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: first column left-aligned, the others right-aligned."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
