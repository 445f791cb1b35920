"""Shared server-side pieces of the stacking methods (FLoRIST, FLoRA, FlexLoRA, FedEx-LoRA).

Uploads are put in client-id order before anything is summed or stacked, so that the result
does not depend on the order in which clients happened to answer (bit for bit, not just up
to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.errors import PayloadError
from fedlora.methods.base import Factored, LoraPair, Setup, Tensor, Upload, aggregation_weights
from fedlora.methods.common import dense, key
from fedlora.ops.stack import stack_products


def ordered(uploads: Sequence[Upload]) -> list[Upload]:
    """Uploads sorted by client id; a client that answers twice is an error."""
    out = sorted(uploads, key=lambda u: u.cid)
    for prev, cur in zip(out, out[1:], strict=False):
        if prev.cid == cur.cid:
            raise PayloadError(f"client {cur.cid} uploaded twice in one round")
    return out


def client_pair(upload: Upload, setup: Setup, layer: str) -> LoraPair:
    """The trained ``(A_k, B_k)`` of ``layer`` in an upload, checked against the client's rank."""
    a = dense(upload.payload[key(layer, "A")])
    b = dense(upload.payload[key(layer, "B")])
    rank = setup.client(upload.cid).rank
    if a.shape[0] != rank or b.shape[1] != rank:
        raise PayloadError(
            f"client {upload.cid} uploaded {layer} with A {tuple(a.shape)} / B {tuple(b.shape)}, "
            f"expected rank {rank}"
        )
    return LoraPair(a, b)


def client_b(upload: Upload, setup: Setup, layer: str) -> Tensor:
    """The trained ``B_k`` of ``layer`` in an upload, checked against the client's rank."""
    b = dense(upload.payload[key(layer, "B")])
    spec = setup.layer(layer)
    if tuple(b.shape) != (spec.out_features, setup.client(upload.cid).rank):
        raise PayloadError(f"client {upload.cid} uploaded {layer}.B of shape {tuple(b.shape)}")
    return b


def stacked_update(uploads: Sequence[Upload], setup: Setup) -> dict[str, Factored]:
    """Per layer ``(B_st, A_st)`` with ``B_st @ A_st = Σ_k p_k s_k B_k A_k`` (docs/methods.md,
    FLoRIST "Stack"): B's side by side, ``p_k s_k A_k`` stacked, rank ``Σ r_k``."""
    ups = ordered(uploads)
    weights = aggregation_weights(ups, setup.weighting)
    coeffs = [p * setup.client(u.cid).scaling for p, u in zip(weights, ups, strict=True)]
    out: dict[str, Factored] = {}
    for spec in setup.layers:
        pairs = [client_pair(u, setup, spec.name) for u in ups]
        out[spec.name] = stack_products([p.B for p in pairs], [p.A for p in pairs], coeffs)
    return out


def global_scaling(setup: Setup) -> float:
    """``s_g``: the scaling of the global adapter (that of the highest-rank client, as in
    FedAvg; with the usual ``alpha = 2r`` every client has the same scaling)."""
    return setup.global_alpha / setup.max_rank


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``Σ_k w_k T_k`` in the tensors' own dtype (float64 inputs stay float64)."""
    if not tensors or len(tensors) != len(weights):
        raise ValueError(
            f"need K >= 1 tensors with one weight each, got {len(tensors)} / {len(weights)}"
        )
    out = weights[0] * tensors[0]
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        out = out + w * t
    return out
