"""Each row's learning rate, chosen on the validation split.

For every tuned row (a method, or the centralised reference) and every rate of the budget's
grid, one run at the tuning seed is scored on each domain's validation slice (training
records never trained on, disjoint from the test sets). A rate's score is the macro-average
of the relative loss ``L_d / L0_d`` over the domains (``L0_d``: the base model's validation
loss), so that no domain's scale decides; the lowest wins. A rate whose run failed or
diverged (a non-finite loss) is never chosen; a row with no usable rate keeps the budget's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any


def relative_loss(losses: Mapping[str, float], base: Mapping[str, float]) -> float:
    """``mean_d L_d / L0_d`` over the domains both have."""
    ratios = [loss / base[d] for d, loss in losses.items() if d in base and base[d] > 0]
    return statistics.fmean(ratios) if ratios else math.nan


def choose(
    scores: Mapping[str, Mapping[float, float]], default: float
) -> dict[str, dict[str, Any]]:
    """Per tuned row, the rate with the lowest finite score (``default`` if none) and the
    scores of the grid."""
    out = {}
    for key, by_lr in scores.items():
        finite = {lr: s for lr, s in by_lr.items() if math.isfinite(s)}
        best = min(finite, key=lambda lr: (finite[lr], lr)) if finite else default
        out[key] = {
            "lr": best,
            "scores": {f"{lr:g}": s for lr, s in sorted(by_lr.items())},
            "tuned": bool(finite),
        }
    return out
