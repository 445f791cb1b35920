"""What the server does to decoded uploads before it aggregates them: it trusts no number a
client reports and bounds what any one client can change.

- **Weights.** A reported training-sample count above ``max_weight_ratio`` times the round's
  lower median count is capped there (a forged count of 10^15 cannot make its sender's weight
  nearly 1). The lower median is the smaller middle value, so with two uploads each is judged
  against the other, and one liar cannot move it.
- **Changes.** Each upload is compared, per adapted layer, with what that client would have
  uploaded had it not trained (``Method.upload_reference``, rebuilt on the server from the
  broadcast, as the client did). A layer whose change has a norm above the bound (``ratio``
  times the round's lower median change of that layer, and/or an absolute ``norm``) is scaled
  back onto the bound (``clip``) or its upload is refused (``refuse``). With one upload only
  the absolute bound can judge it.

Everything here is a pure function of its inputs: uploads are never mutated.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from fedlora.methods.base import Payload, ServerState, Upload
from fedlora.methods.common import dense
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse


def layer_of(name: str) -> str:
    """The adapted layer a payload entry belongs to (``<layer>.<part>``)."""
    return name.rpartition(".")[0]


def cap_weights(uploads: Sequence[Upload], ratio: float) -> tuple[list[Upload], dict[int, str]]:
    """Cap each reported count at ``ratio`` times the round's lower median (0: no cap)."""
    if ratio <= 0 or not uploads:
        return list(uploads), {}
    cap = math.floor(ratio * statistics.median_low(u.n_samples for u in uploads))
    out, capped = [], {}
    for u in uploads:
        if u.n_samples > cap:
            capped[u.cid] = (
                f"reported {u.n_samples} training samples; counted as {cap} "
                f"({ratio:g} x the round's median report)"
            )
            u = replace(u, n_samples=cap)
        out.append(u)
    return out, capped


def _change(entry: object, ref: torch.Tensor | None) -> torch.Tensor:
    """The values by which one upload entry differs from its reference (flat, float64)."""
    if isinstance(entry, Sparse):
        if ref is not None and bool(ref.any()):
            raise ValueError("a sparse upload entry must be a change from zero")
        return entry.values.double()
    if isinstance(entry, SeededInit):
        raise ValueError("an upload cannot carry a seeded init")
    value = dense(entry).double()  # type: ignore[arg-type]
    return (value - ref.double() if ref is not None else value).reshape(-1)


def change_norms(payload: Payload, reference: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Norm of each layer's change: the upload minus what an untrained client would send
    (absent reference entries are zero)."""
    squares: dict[str, float] = {}
    for name, entry in payload.items():
        diff = _change(entry, reference.get(name))
        squares[layer_of(name)] = squares.get(layer_of(name), 0.0) + float(diff.pow(2).sum())
    return {layer: math.sqrt(s) for layer, s in squares.items()}


def scale_changes(
    payload: Payload, reference: Mapping[str, torch.Tensor], scales: Mapping[str, float]
) -> Payload:
    """``payload`` with each listed layer's change multiplied by its scale."""
    out: Payload = {}
    for name, entry in payload.items():
        c = scales.get(layer_of(name))
        if c is None:
            out[name] = entry
        elif isinstance(entry, Sparse):
            out[name] = replace(entry, values=entry.values * c)
        else:
            ref = reference.get(name)
            value = dense(entry)
            out[name] = value * c if ref is None else ref + (value - ref) * c
    return out


@dataclass(frozen=True)
class ClipPolicy:
    """``ratio`` (x the round's lower median change per layer; 0: off), ``norm`` (absolute
    per-layer bound; 0: off) and ``action`` (``clip`` or ``refuse``)."""

    ratio: float = 10.0
    norm: float = 0.0
    action: str = "clip"

    def bounds(self, norms: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
        """The bound of each layer this round (``inf`` where nothing bounds it)."""
        layers = {layer for per in norms.values() for layer in per}
        out = {}
        for layer in layers:
            bound = math.inf
            if self.ratio > 0:
                # A layer no client changed (a frozen factor) bounds every change to zero.
                median = statistics.median_low(per.get(layer, 0.0) for per in norms.values())
                bound = self.ratio * median
            if self.norm > 0:
                bound = min(bound, self.norm)
            out[layer] = bound
        return out


@dataclass
class Guarded:
    """The uploads to aggregate and what was done to the others."""

    uploads: list[Upload]
    capped: dict[int, str]
    clipped: dict[int, dict[str, float]]
    refused: dict[int, str]


def clip_changes(
    uploads: Sequence[Upload],
    references: Mapping[int, Mapping[str, torch.Tensor]],
    policy: ClipPolicy,
) -> tuple[list[Upload], dict[int, dict[str, float]], dict[int, str]]:
    """Bound every upload's per-layer change (see the module docstring).

    Returns the uploads to keep, per clipped client ``{"layers": n, "scale": smallest}``, and
    the refused clients with the reason.
    """
    if policy.ratio <= 0 and policy.norm <= 0:
        return list(uploads), {}, {}
    norms: dict[int, dict[str, float]] = {}
    refused: dict[int, str] = {}
    for u in uploads:
        try:
            norms[u.cid] = change_norms(u.payload, references.get(u.cid, {}))
        except (ValueError, RuntimeError) as exc:  # the decoder's checks make this a bug
            refused[u.cid] = f"its change cannot be measured: {exc}"
    bounds = policy.bounds(norms)
    kept, clipped = [], {}
    for u in uploads:
        if u.cid in refused:
            continue
        over = {layer: bounds[layer] / n for layer, n in norms[u.cid].items() if n > bounds[layer]}
        if not over:
            kept.append(u)
            continue
        worst = min(over, key=lambda layer: over[layer])
        if policy.action == "refuse":
            refused[u.cid] = (
                f"change of layer {worst} has norm {norms[u.cid][worst]:.4g}, above the "
                f"round's bound {bounds[worst]:.4g}"
            )
            continue
        clipped[u.cid] = {"layers": len(over), "scale": over[worst]}
        payload = scale_changes(u.payload, references.get(u.cid, {}), over)
        kept.append(replace(u, payload=payload))
    return kept, clipped, refused


def guard(
    uploads: Sequence[Upload],
    references: Mapping[int, Mapping[str, torch.Tensor]],
    *,
    max_weight_ratio: float,
    policy: ClipPolicy,
) -> Guarded:
    """Cap the reported counts, then bound the changes."""
    capped_ups, capped = cap_weights(uploads, max_weight_ratio)
    kept, clipped, refused = clip_changes(capped_ups, references, policy)
    return Guarded(kept, capped, clipped, refused)


def non_finite(state: ServerState) -> str | None:
    """The first state tensor holding NaN or Inf, or None."""
    for name, t in state.tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None
