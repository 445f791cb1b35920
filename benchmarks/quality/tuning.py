"""Each row's learning rate, chosen on the validation split by a rule written before the runs.

For every tuned row (a method, or the centralised reference) and every rate tried, one run
at the tuning seed (never a test seed) is scored on each domain's validation slice (training
records never trained on, disjoint from the test sets). A rate's score is the macro-average
of the relative loss ``L_d / L0_d`` over the domains (``L0_d``: the base model's validation
loss), so that no domain's scale decides; the lowest wins. A rate whose run failed or
diverged (a non-finite loss) is never chosen.

**No edges** (:func:`next_rates`): the budget's grid is tried first. While the best rate is
the lowest or the highest tried, the next step beyond it is tried (the grid's own step, at
most :data:`MAX_EXTENSIONS` times). Then, where the best rate and a neighbour tried beside it
score more than :data:`STEEP` times apart (or the neighbour diverged), the geometric
midpoint between them is tried, once per pair. A row is tuned when the rule asks for
nothing more; its test runs wait until then.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

MAX_EXTENSIONS = 3
"""Steps beyond the grid's edge at most (a row still at an edge after them keeps its best
rate, and the report says so)."""

STEEP = 2.0
"""Neighbouring scores this many times apart get a midpoint between their rates."""


def relative_loss(losses: Mapping[str, float], base: Mapping[str, float]) -> float:
    """``mean_d L_d / L0_d`` over the domains both have."""
    ratios = [loss / base[d] for d, loss in losses.items() if d in base and base[d] > 0]
    return statistics.fmean(ratios) if ratios else math.nan


def _key(lr: float) -> float:
    return float(f"{lr:.3g}")


def next_rates(scores: Mapping[float, float], grid: Sequence[float]) -> list[float]:
    """The rates the rule asks to try next, given the ``scores`` of the rates tried so far
    (empty: the row is tuned)."""
    grid = sorted(grid)
    missing = [lr for lr in grid if lr not in scores]
    if missing:
        return missing
    tried = sorted(scores)
    finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
    if not finite:
        return []
    best = min(finite, key=lambda lr: (finite[lr], lr))
    up, down = grid[-1] / grid[-2], grid[1] / grid[0]
    if best == tried[-1] and len([lr for lr in tried if lr > grid[-1]]) < MAX_EXTENSIONS:
        return [_key(best * up)]
    if best == tried[0] and len([lr for lr in tried if lr < grid[0]]) < MAX_EXTENSIONS:
        return [_key(best / down)]
    i = tried.index(best)
    wanted = []
    for j in (i - 1, i + 1):
        if not 0 <= j < len(tried):
            continue
        other = tried[j]
        lo, hi = sorted((best, other))
        if hi / lo < math.sqrt(min(up, down)) * 1.01:
            continue  # already a midpoint pair
        s = scores[other]
        if not math.isfinite(s) or max(s, finite[best]) > STEEP * min(s, finite[best]):
            wanted.append(_key(math.sqrt(lo * hi)))
    return [lr for lr in wanted if lr not in scores]


def choose(
    scores: Mapping[str, Mapping[float, float]], default: float, grid: Sequence[float] = ()
) -> dict[str, dict[str, Any]]:
    """Per tuned row, the rate with the lowest finite score (``default`` if none), every
    score tried, and whether the rule is satisfied (``settled``: nothing more to try)."""
    out = {}
    for key, by_lr in scores.items():
        finite = {lr: s for lr, s in by_lr.items() if math.isfinite(s)}
        best = min(finite, key=lambda lr: (finite[lr], lr)) if finite else default
        out[key] = {
            "lr": best,
            "scores": {f"{lr:g}": s for lr, s in sorted(by_lr.items())},
            "tuned": bool(finite),
            "settled": not next_rates(by_lr, grid) if grid else True,
        }
    return out
