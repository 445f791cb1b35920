"""How many torch threads a training client uses (``train.threads``).

Two processes that each use every core of a small machine slow each other down many times
over (a run beside a second torch process took its local steps from 0.4 s to 15 s on 2 cores):
so fedlora sets the count itself. ``0`` means the cores this process may run on, divided
among the clients that train at the same time in it (one in-process; one per Ray actor in
Flower's simulation engine); the resolved number is what the run's config records.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int, concurrent: int = 1) -> int:
    """``requested`` if set, else the available cores shared by ``concurrent`` clients."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, concurrent))


def use_threads(count: int) -> None:
    """Make torch use ``count`` threads in this process (a no-op when it already does)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
