"""Layers of one shape factorised as one batched call: grouping, budgets, and the same
results as one call per layer (float64 and float32) against dense references."""

from __future__ import annotations

import pytest
import torch

from fedlora.ops.batches import Plan, map_layers, run_batched, shape_batches
from fedlora.ops.factored import factored_svd
from fedlora.ops.stack import compress, compress_layers

SHAPES = [(12, 9, 4), (12, 9, 4), (7, 15, 4), (12, 9, 4), (7, 15, 4), (5, 6, 2)]
"""(m, n, q) of six layers: three shapes, two of them repeated."""


def _stacks(dtype: torch.dtype, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"l{i}": (
            torch.randn(m, q, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(q, n, generator=gen, dtype=torch.float64).to(dtype),
        )
        for i, (m, n, q) in enumerate(SHAPES)
    }


def test_shape_batches_groups_equal_signatures_within_the_budget() -> None:
    # Prepare: five layers of two signatures, 100 bytes each
    plans = {
        name: Plan(signature=sig, nbytes=100, cuda=False)
        for name, sig in [("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 2)]
    }
    # Execute / Assert: a 250-byte budget holds two layers; first-seen order of signatures
    assert list(shape_batches(plans, 250)) == [["a", "c"], ["d"], ["b", "e"]]
    assert list(shape_batches(plans, 10**6)) == [["a", "c", "d"], ["b", "e"]]
    # 0, and the CPU's default: one layer per call
    assert list(shape_batches(plans, 0)) == [["a"], ["c"], ["d"], ["b"], ["e"]]
    assert list(shape_batches(plans)) == list(shape_batches(plans, 0))
    # a GPU layer's default budget batches them
    gpu = {name: plan._replace(cuda=True) for name, plan in plans.items()}
    assert list(shape_batches(gpu)) == [["a", "c", "d"], ["b", "e"]]


def test_run_batched_builds_a_layer_only_when_its_batch_runs() -> None:
    # Prepare: three layers of one shape, batches of two; record when each input is built
    built: list[str] = []
    plans = {name: Plan(signature=0, nbytes=8, cuda=False) for name in ("x", "y", "z")}

    def build(name: str) -> tuple[torch.Tensor]:
        built.append(name)
        return (torch.full((2,), float(ord(name))),)

    # Execute
    results = run_batched(lambda t: (2 * t,), plans, build, budget=16)
    first = next(results)
    # Assert: the first batch (x, y) was built, z not yet; every result is its own layer's
    assert built == ["x", "y"] and first[0] == "x"
    rest = dict(results)
    assert built == ["x", "y", "z"]
    assert rest["z"][0].tolist() == [2.0 * ord("z")] * 2
    assert rest["y"][0].tolist() == [2.0 * ord("y")] * 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_factored_svd_equals_the_per_layer_svd_and_the_dense_one(
    dtype: torch.dtype,
) -> None:
    # Prepare
    stacks = _stacks(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    # Execute: every shape in one call, and one call per layer
    batched = dict(map_layers(factored_svd, stacks, budget=10**9))
    single = dict(map_layers(factored_svd, stacks, budget=0))
    # Assert: same singular values and product as the per-layer call and as a float64 dense
    # SVD of the formed product; outputs keep the inputs' dtype
    assert batched.keys() == stacks.keys()
    for name, (left, right) in stacks.items():
        u, s, v = batched[name]
        assert u.dtype == dtype and u.ndim == 2
        dense = left.double() @ right.double()
        want_s = torch.linalg.svdvals(dense)[: s.shape[0]]
        torch.testing.assert_close(s.double(), want_s, rtol=tol, atol=tol)
        torch.testing.assert_close(s, single[name][1], rtol=tol, atol=tol)
        got = (u.double() * s.double()) @ v.double().T
        torch.testing.assert_close(got, dense, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compress_layers_batched_equals_compress_per_layer(dtype: torch.dtype) -> None:
    # Prepare: one layer of rank 2 within a stack of 4 columns, so the numerical rank drops
    stacks = _stacks(dtype, seed=3)
    left, right = stacks["l1"]
    stacks["l1"] = (torch.cat([left[:, :2], left[:, :2]], dim=1), right)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    # Execute
    got = dict(compress_layers(stacks, budget=10**9))
    # Assert: each layer as compress() on its own gives, ranks included
    for name, (left, right) in stacks.items():
        want = compress(left, right)
        assert got[name][1].shape == want[1].shape
        torch.testing.assert_close(
            got[name][0] @ got[name][1], want[0] @ want[1], rtol=tol, atol=tol
        )
    assert got["l1"][1].shape[0] == 2


def test_factored_svd_refuses_batches_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="batches differ"):
        factored_svd(torch.zeros(2, 4, 3), torch.zeros(3, 3, 5))
