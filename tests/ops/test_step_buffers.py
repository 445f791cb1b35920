"""The server step's shortcuts give what the plain path gives: deltas densified in a reused
scratch buffer, pseudo-inverses built in one batch, DARE applied in place, and the factor
norms from one dot product per tensor."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.methods.base import LayerSpec, Setup
from fedlora.methods.fedsrd_report import norms_of
from fedlora.ops.masks import dare, dare_dense_
from fedlora.ops.scratch import Scratch
from fedlora.ops.solve import Pinv, fixed_all, pinvs, solve_a_clients, solve_b_clients
from fedlora.ops.sparse import Sparse


def _sparse(gen: torch.Generator, shape: tuple[int, int], keep: float) -> Sparse:
    dense = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return Sparse.from_mask(dense, torch.rand(*shape, generator=gen) < keep)


def test_scratch_hands_out_one_zeroed_buffer_per_shape_and_dtype() -> None:
    scratch = Scratch()
    first = scratch.zeros((3, 4), torch.float32)
    first.fill_(7.0)
    again = scratch.zeros((3, 4), torch.float32)
    other = scratch.zeros((3, 4), torch.float64)
    assert again.data_ptr() == first.data_ptr() and torch.equal(again, torch.zeros(3, 4))
    assert other.data_ptr() != first.data_ptr()
    assert scratch.nbytes == 12 * 4 + 12 * 8


@pytest.mark.parametrize("rank", [4, 6])
def test_steps_through_one_scratch_equal_fresh_steps(rank: int) -> None:
    # Prepare: two layers of one shape in a row, so the second reuses the first's buffers
    gen = torch.Generator().manual_seed(3)
    m, n = 10, 7
    layers = []
    for _ in range(2):
        a = torch.randn(rank, n, generator=gen, dtype=torch.float64)
        b = torch.randn(m, rank, generator=gen, dtype=torch.float64)
        clients = [
            (p, _sparse(gen, (rank, n), 0.3), _sparse(gen, (m, rank), 0.3)) for p in (0.3, 0.7)
        ]
        layers.append((a, b, clients))
    scratch = Scratch()
    for a, b, clients in layers:
        # Execute
        got_b = solve_b_clients(a, b, clients, scratch=scratch)
        got_a = solve_a_clients(a, b, clients, scratch=scratch)
        # Assert: the same bits as with fresh zeroed buffers
        assert torch.equal(got_b, solve_b_clients(a, b, clients))
        assert torch.equal(got_a, solve_a_clients(a, b, clients))
    # one buffer per delta shape (r×n and m×r), each allocated once
    assert scratch.nbytes == 8 * (rank * n + m * rank)


def _matrices() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    full = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    deficient = full.clone()
    deficient[:, 3] = deficient[:, 0]
    return [
        full,
        torch.randn(9, 4, generator=gen),  # float32, its own group
        deficient,
        torch.zeros(7, 4, dtype=torch.float64),
        torch.randn(15, 3, generator=gen, dtype=torch.float64),  # another rank, its own group
        torch.randn(5, 4, generator=gen, dtype=torch.float64),
    ]


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_batched_pseudo_inverses_equal_those_built_one_at_a_time(ridge: float) -> None:
    matrices = _matrices()
    rhs = torch.randn(16, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for matrix, batched in zip(matrices, pinvs(matrices, ridge), strict=True):
        alone = Pinv(matrix, ridge)
        torch.testing.assert_close(batched.gram_pinv(), alone.gram_pinv(), rtol=1e-10, atol=1e-12)
        assert batched.condition == pytest.approx(alone.condition, rel=1e-10)
        rows = rhs[: matrix.shape[0]].to(matrix.dtype)
        torch.testing.assert_close(batched(rows), alone(rows), rtol=1e-5, atol=1e-9)


def test_batched_pseudo_inverses_match_the_dense_pseudo_inverse() -> None:
    # an independent reference: torch's SVD-based pinv in float64, and σ_max/σ_min over the
    # directions kept (the rank-deficient matrix keeps 3 of its 4, the zero one none)
    rhs = torch.randn(16, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    for matrix, built in zip(_matrices(), pinvs(_matrices()), strict=True):
        wide = matrix.double()
        rows = rhs[: matrix.shape[0]]
        want = torch.linalg.pinv(wide) @ rows
        tol = 1e-5 if matrix.dtype == torch.float32 else 1e-9
        torch.testing.assert_close(built(rows.to(matrix.dtype)).double(), want, rtol=tol, atol=tol)
        s = torch.linalg.svdvals(wide)
        kept = s[s > s[0] * 1e-6] if float(s[0]) > 0 else s[:0]
        want_cond = float(kept[0] / kept[-1]) if kept.numel() else 1.0
        assert built.condition == pytest.approx(want_cond, rel=1e-6)


def test_the_round_batch_solves_against_each_layers_fixed_factor() -> None:
    # a B-round inverts Aᵀ (Gram A·Aᵀ), an A-round B (Gram Bᵀ·B), layer by layer in the batch;
    # checked against float64 Grams and SVD condition numbers computed here
    gen = torch.Generator().manual_seed(4)
    pairs = [
        (torch.randn(4, n, generator=gen), torch.randn(m, 4, generator=gen))
        for m, n in ((6, 9), (8, 5))
    ]
    for factor in ("A", "B"):
        for (a, b), built in zip(pairs, fixed_all(factor, pairs), strict=True):
            against = (b if factor == "A" else a.T).double()
            torch.testing.assert_close(built.gram, against.T @ against, rtol=1e-12, atol=1e-12)
            s = torch.linalg.svdvals(against)
            assert built.condition == pytest.approx(float(s[0] / s[-1]), rel=1e-8)


@pytest.mark.parametrize("drop", [0.0, 0.5, 0.8])
def test_dare_in_place_is_dare_bit_for_bit(drop: float) -> None:
    delta = torch.randn(33, 7, generator=torch.Generator().manual_seed(2))
    want = dare(delta, drop, 17).to_dense()
    owned = delta.clone()
    got = dare_dense_(owned, drop, 17)
    assert got.data_ptr() == owned.data_ptr()
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_factor_norms_match_the_float64_sum() -> None:
    gen = torch.Generator().manual_seed(6)
    specs = tuple(LayerSpec(f"l{i}", in_features=300, out_features=200) for i in range(3))
    setup = Setup(layers=specs, clients=())
    tensors = {}
    for s in specs:
        tensors[f"{s.name}.A"] = 3.0 + torch.randn(8, 300, generator=gen)
        tensors[f"{s.name}.B"] = torch.randn(200, 8, generator=gen).double()
    got = norms_of(tensors, setup)
    for part in ("A", "B"):
        want = math.sqrt(
            sum(float(tensors[f"{s.name}.{part}"].double().pow(2).sum()) for s in specs)
        )
        assert got[part] == pytest.approx(want, rel=1e-6)


def test_deltas_are_densified_on_the_factors_device() -> None:
    # A GPU step passes GPU factors and deltas; the meta device stands in for any device that
    # is not the CPU (a buffer left on the CPU would fail the product that reads it).
    from fedlora.ops.solve import _dense_block

    like = torch.empty(6, 4, device="meta")
    sparse = Sparse((6, 4), torch.tensor([1, 9], device="meta"), torch.ones(2, device="meta"))
    # deltas decoded on the CPU beside factors on another device are moved to it
    cpu_sparse = Sparse((6, 4), torch.tensor([1, 9]), torch.ones(2, dtype=torch.float64))
    for delta in (like, sparse, torch.zeros(6, 4), cpu_sparse):
        for scratch in (None, Scratch()):
            out = _dense_block(delta, like, scratch)
            assert out.device.type == "meta" and out.shape == (6, 4)
