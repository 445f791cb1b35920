"""FedSRD's per-round solve diagnostics: the conditioning of the factor each least-squares
step solves against and the growth of A and B, with a warning as a blow-up starts
(docs/methods.md, "FedSRD's stability")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedlora.methods.base import Setup, Tensor
from fedlora.methods.common import key

COND_WARN = 1e4
"""A solved-against factor worse conditioned than this amplifies its weakest direction by
at least this much relative to its strongest (docs/methods.md, "FedSRD's stability")."""

GROWTH_WARN = 10.0
"""A round that multiplies ‖A‖ or ‖B‖ (over all layers) by more than this is flagged."""


def stability_report(
    factor: str,
    conditions: Sequence[float],
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> dict[str, Any]:
    """The round's solve diagnostics: the solved-against factor's condition numbers
    (max and median over layers), the norms of A and B over all layers before and after the
    update, and a warning when either crosses :data:`COND_WARN` / :data:`GROWTH_WARN`."""
    ordered = sorted(conditions)
    report: dict[str, Any] = {
        "solved_against": "A" if factor == "B" else "B",
        "cond_max": ordered[-1],
        "cond_median": ordered[len(ordered) // 2],
        "norm_a": after["A"],
        "norm_b": after["B"],
    }
    growth = {p: after[p] / before[p] for p in ("A", "B") if before[p] > 0}
    problems = []
    if report["cond_max"] > COND_WARN:
        problems.append(
            f"{report['solved_against']} is ill-conditioned (condition number "
            f"{report['cond_max']:.3g} > {COND_WARN:g})"
        )
    problems += [
        f"‖{p}‖ grew {g:.3g}× in one round" for p, g in sorted(growth.items()) if g > GROWTH_WARN
    ]
    if problems:
        report["warning"] = (
            "FedSRD's solve may be blowing up: "
            + "; ".join(problems)
            + (" (method.fedsrd.ridge stabilises it; docs/methods.md)")
        )
    return report


def norms_of(
    tensors: Mapping[str, Tensor],
    setup: Setup,
    meta: Mapping[str, Any] | None = None,
    parts: Sequence[str] = ("A", "B"),
) -> dict[str, float]:
    """‖A‖_F and ‖B‖_F (``parts``) over all layers of a FedSRD state: read from the state's
    own round report (``meta``) when it has one (it was computed from these tensors), else
    computed (one dot product per tensor in its own dtype, summed over layers in float64)."""
    report = (meta or {}).get("report") or {}
    if all(f"norm_{p.lower()}" in report for p in parts):
        return {p: float(report[f"norm_{p.lower()}"]) for p in parts}
    return {
        p: math.sqrt(sum(_squared_norm(tensors[key(s.name, p)]) for s in setup.layers))
        for p in parts
    }


def _squared_norm(tensor: Tensor) -> float:
    """``‖tensor‖²_F`` as one BLAS dot product: a float32 factor's (at most a few million
    elements) comes out within about 1e-6 of the float64 sum, at a fraction of the cost of
    widening it first."""
    flat = tensor.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.double()
    return float(torch.dot(flat, flat))


def update_ratio(old: Sequence[Tensor], new: Sequence[Tensor]) -> float | None:
    """``‖new − old‖_F / ‖old‖_F`` over all layers' matrices together (None when ‖old‖ = 0)."""
    num = sum(float((n.double() - o.double()).pow(2).sum()) for o, n in zip(old, new, strict=True))
    den = sum(float(o.double().pow(2).sum()) for o in old)
    return math.sqrt(num / den) if den > 0 else None
