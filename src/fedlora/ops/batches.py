"""Per-layer factorisations run as batched calls over the layers of one shape.

A Llama-style model has 196 adapted layers but a handful of distinct shapes. On a GPU a thin
QR or SVD of one layer's stack is launch-bound (about 1% of the card's rate measured on an
H200), so the layers of one shape are stacked into a ``(b, m, q)`` batch and factorised in one
call of each kernel. On the CPU LAPACK runs a batch one matrix at a time anyway, and the copy
into the batch costs time and memory, so the default there is one layer at a time.

A batch holds at most :data:`BATCH_BYTES` of its layers' inputs (at least one layer), so the
extra memory is that batch's copy of its inputs and its outputs, never the whole model's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch

Tensor = torch.Tensor

BATCH_BYTES = 256 * 2**20
"""The most bytes of layer inputs stacked into one batched call on a GPU."""


class Plan(NamedTuple):
    """What batching needs to know of one layer before its inputs are built: layers with
    equal ``signature`` stack together; ``nbytes`` is the size of its inputs."""

    signature: Hashable
    nbytes: int
    cuda: bool


def default_budget(cuda: bool) -> int:
    """:data:`BATCH_BYTES` on a GPU, 0 (one layer per call) on the CPU."""
    return BATCH_BYTES if cuda else 0


def shape_batches(plans: Mapping[str, Plan], budget: int | None = None) -> Iterator[list[str]]:
    """The layers' names in batches: equal signatures together (in first-seen order), each
    batch at most ``budget`` bytes of inputs and at least one layer; ``None``: the budget of
    the first layer's device (:func:`default_budget`), 0: one layer at a time."""
    groups: dict[Hashable, list[str]] = {}
    for name, plan in plans.items():
        groups.setdefault(plan.signature, []).append(name)
    for names in groups.values():
        first = plans[names[0]]
        limit = default_budget(first.cuda) if budget is None else budget
        size = max(1, limit // max(first.nbytes, 1))
        for start in range(0, len(names), size):
            yield names[start : start + size]


def run_batched(
    fn: Callable[..., Sequence[Tensor]],
    plans: Mapping[str, Plan],
    build: Callable[[str], Sequence[Tensor]],
    budget: int | None = None,
) -> Iterator[tuple[str, tuple[Tensor, ...]]]:
    """``(name, fn(*build(name)))`` for every layer, ``fn`` called once per batch of
    :func:`shape_batches` on the inputs stacked along a new first dimension (``fn`` must
    treat leading dimensions as a batch). A layer's inputs are built only when its batch
    runs, and a consumer that drops each result holds one batch's outputs at a time."""
    for names in shape_batches(plans, budget):
        if len(names) == 1:
            yield names[0], tuple(fn(*build(names[0])))
            continue
        inputs = [build(name) for name in names]
        stacked = [torch.stack([layer[i] for layer in inputs]) for i in range(len(inputs[0]))]
        del inputs
        outputs = fn(*stacked)
        del stacked
        for i, name in enumerate(names):
            yield name, tuple(out[i] for out in outputs)


def plan_of(tensors: Sequence[Tensor]) -> Plan:
    """The plan of a layer whose inputs exist already: shapes and dtype, their bytes."""
    return Plan(
        signature=tuple((tuple(t.shape), t.dtype, t.device) for t in tensors),
        nbytes=sum(t.numel() * t.element_size() for t in tensors),
        cuda=tensors[0].is_cuda,
    )


def map_layers(
    fn: Callable[..., Sequence[Tensor]],
    layers: Mapping[str, Sequence[Tensor]],
    budget: int | None = None,
) -> Iterator[tuple[str, tuple[Tensor, ...]]]:
    """:func:`run_batched` over inputs that exist already (each layer's tensors)."""
    plans = {name: plan_of(tensors) for name, tensors in layers.items()}
    return run_batched(fn, plans, layers.__getitem__, budget)
