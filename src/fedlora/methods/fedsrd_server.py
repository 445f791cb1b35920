"""FedSRD's server maths, per layer and batched: the reconstructed aggregate as a stack
of client factors, its rank-r truncation (batched over the layers of one shape on a GPU),
the least-squares step toward it, and the balanced factors of a dense decomposition. The
method's round is :mod:`fedlora.methods.fedsrd`; the formulas are in its docstring."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch

from fedlora.methods import synced
from fedlora.methods.base import Factored, LoraPair, Payload, Setup
from fedlora.methods.common import dense, key
from fedlora.ops.batches import Plan, run_batched
from fedlora.ops.factored import truncated_factors
from fedlora.ops.solve import (
    ClientDeltas,
    Pinv,
    fixed_all,
    projected_change,
    solve_a_terms,
    solve_b_terms,
    solve_projected,
)
from fedlora.ops.sparse import Sparse
from fedlora.ops.stack import fit_rank

Tensor = torch.Tensor


def _add_into(block: Tensor, delta: Tensor | Sparse, base: Tensor) -> None:
    """``block = base + delta``, written into ``block`` (a view into a stack)."""
    if isinstance(delta, Sparse):
        block.copy_(base)
        cols = base.shape[1]
        rows, within = delta.indices // cols, delta.indices % cols
        block.index_put_((rows, within), delta.values.to(block.dtype), accumulate=True)
    else:
        torch.add(base, delta.to(block.dtype), out=block)


def client_stack(
    a_prev: Tensor, b_prev: Tensor, deltas: ClientDeltas
) -> tuple[Tensor, Tensor, Tensor]:
    """``W = Σ p_k (B^{t-1}+ΔB_k)(A^{t-1}+ΔA_k)`` as ``([B_1 … B_K], [A_1; …; A_K], w)`` with
    ``W = left·diag(w)·right`` (``w`` repeats each ``p_k`` r times).

    The stacks are written in place, each block once; the weights stay apart so that no
    pass over the m×Kr stack scales it (:func:`truncated_factors` takes them).
    """
    (m, r), n, count = b_prev.shape, a_prev.shape[1], len(deltas)
    left = torch.empty(m, count * r, dtype=b_prev.dtype)
    right = torch.empty(count * r, n, dtype=a_prev.dtype)
    for k, (_, d_a, d_b) in enumerate(deltas):
        _add_into(left[:, k * r : (k + 1) * r], d_b, b_prev)
        _add_into(right[k * r : (k + 1) * r], d_a, a_prev)
    weights = torch.tensor([p for p, _, _ in deltas], dtype=torch.float64).repeat_interleave(r)
    return left, right, weights


def averaged_aggregate(a_prev: Tensor, b_prev: Tensor, deltas: ClientDeltas) -> Factored:
    """The ``reconstruct = false`` ablation: ``W = (B^{t-1} + Σ p_k ΔB_k)(A^{t-1} + Σ p_k ΔA_k)``,
    the product of the averaged factors (rank r, no stack of client products)."""
    b = b_prev + sum((p * dense(d_b) for p, _, d_b in deltas), torch.zeros_like(b_prev))
    a = a_prev + sum((p * dense(d_a) for p, d_a, _ in deltas), torch.zeros_like(a_prev))
    return b, a


class Solved(NamedTuple):
    """One layer's least-squares update and the condition number of the factor it was
    solved against (from the same pseudo-inverse: one Gram and one eigendecomposition)."""

    update: Tensor
    condition: float


class LayerInputs(NamedTuple):
    """One layer's round inputs on the server: the previous factors and the clients' deltas."""

    a_prev: Tensor
    b_prev: Tensor
    deltas: ClientDeltas


def _plan(layer: LayerInputs) -> Plan:
    """A layer's batching plan from its inputs, before its stacks exist."""
    (m, r), n, count = layer.b_prev.shape, layer.a_prev.shape[1], len(layer.deltas)
    return Plan(
        signature=((m, r), n, count, layer.b_prev.dtype, layer.b_prev.device),
        nbytes=(m + n) * count * r * layer.b_prev.element_size(),
        cuda=layer.b_prev.is_cuda,
    )


def batched_targets(
    layers: Mapping[str, LayerInputs], rank: int, batch_bytes: int | None = None
) -> Iterator[tuple[str, Factored]]:
    """Every layer's rank-``rank`` truncation of its reconstructed aggregate, the layers of
    one shape truncated together on a GPU (:func:`fedlora.ops.batches.run_batched`: at most
    :data:`~fedlora.ops.batches.BATCH_BYTES` of stacked client factors per call; on the CPU
    one layer at a time from its own stack, no copy: batching measured slower there and +60%
    peak memory). ``batch_bytes`` overrides the budget on either device (0: one layer at a
    time). A layer's stack is built when its batch runs; yields ``(layer, W_r)``."""

    def truncate(left: Tensor, right: Tensor, weights: Tensor) -> Factored:
        return truncated_factors(left, right, rank, weights)

    plans = {name: _plan(layer) for name, layer in layers.items()}
    built = run_batched(truncate, plans, lambda name: client_stack(*layers[name]), batch_bytes)
    for name, truncation in built:
        yield name, (truncation[0], truncation[1])


def least_squares_step(
    target: Factored,
    a_prev: Tensor,
    b_prev: Tensor,
    factor: str,
    ridge: float = 0.0,
    *,
    pinv: Pinv | None = None,
) -> Tensor:
    """The closed-form update of ``factor`` toward ``target − B^{t-1}A^{t-1}`` (factored).

    Returns ``ΔB = ΔW·pinv(A^{t-1})`` (m×r) for ``factor == "B"``, else
    ``ΔA = pinv(B^{t-1})·ΔW`` (r×n), with ``ΔW = [W_l, −B^{t-1}]·[W_r; A^{t-1}]``;
    ``ridge > 0`` replaces the pseudo-inverse by the Tikhonov solve (:mod:`fedlora.ops.solve`);
    ``pinv``: :func:`fedlora.ops.solve.fixed` built already.
    """
    # ΔW as two products solved against one Gram matrix, never concatenated:
    # [W_l, −B]·[W_r; A] = W_l·W_r − B·A.
    terms = [target, (-b_prev, a_prev)]
    if factor == "B":
        return solve_b_terms(terms, a_prev, ridge, pinv=pinv)
    return solve_a_terms(terms, b_prev, ridge, pinv=pinv)


def balanced_factors(target: Factored, rank: int) -> LoraPair:
    """A rank-``rank`` LoRA pair with ``B @ A`` = the rank-``rank`` truncated SVD of the
    target, singular values split evenly (``B = U√S``, ``A = √S Vᵀ``, as the authors' code
    factors its truncation); zero-padded when the target has lower rank."""
    us, vt = truncated_factors(*target, rank)
    root = torch.linalg.vector_norm(us, dim=0).sqrt()
    safe = torch.where(root > 0, root, torch.ones_like(root))
    b, a = us / safe, vt * root[:, None]
    return LoraPair(*fit_rank(a, b, rank))


def projected_shapes(setup: Setup, rank: int, factor: str) -> dict[str, tuple[int, ...]]:
    """FedSRD-e's secure terms: m×r per layer in a B-round, r×n in an A-round."""
    return {
        key(s.name, "P" + factor): (s.out_features, rank)
        if factor == "B"
        else (rank, s.in_features)
        for s in setup.layers
    }


def projected_terms(
    view: Mapping[str, Tensor], upload: Payload, setup: Setup, factor: str
) -> dict[str, Tensor]:
    """One client's projected terms (float64) from its synced view and its sparse deltas."""
    out: dict[str, Tensor] = {}
    for s in setup.layers:
        a, b = view[key(s.name, "A")].double(), view[key(s.name, "B")].double()
        d_a = synced.upload_entry(upload, s.name, "A", a)
        d_b = synced.upload_entry(upload, s.name, "B", b)
        out[key(s.name, "P" + factor)] = projected_change(a, b, d_a, d_b, factor)
    return out


def projected_updates(
    tensors: Mapping[str, Tensor],
    mean: Mapping[str, Tensor],
    setup: Setup,
    factor: str,
    ridge: float,
) -> Iterator[tuple[str, Solved]]:
    """Each layer's least-squares update from the mean projected term (the layers'
    pseudo-inverses built in one batch, :func:`fedlora.ops.solve.fixed_all`)."""
    pairs = [(tensors[key(s.name, "A")], tensors[key(s.name, "B")]) for s in setup.layers]
    for s, (a, b), pinv in zip(setup.layers, pairs, fixed_all(factor, pairs, ridge), strict=True):
        term = mean[key(s.name, "P" + factor)]
        yield s.name, Solved(solve_projected(term, a, b, factor, pinv=pinv), pinv.condition)
