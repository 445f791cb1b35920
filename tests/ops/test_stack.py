"""Stacking identity, numerical-rank compression and rank fitting."""

from __future__ import annotations

import pytest
import torch

from fedlora.ops.stack import compress, fit_rank, stack_products


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def test_stack_products_equals_weighted_sum_of_products():
    # Prepare: three products of different ranks
    gen = torch.Generator().manual_seed(0)
    ranks, coeffs = [2, 4, 3], [0.5, -1.25, 2.0]
    bs = [_rand(gen, 7, r) for r in ranks]
    as_ = [_rand(gen, r, 5) for r in ranks]
    expected = sum(c * b @ a for c, b, a in zip(coeffs, bs, as_, strict=True))

    # Execute
    left, right = stack_products(bs, as_, coeffs)

    # Assert
    assert left.shape == (7, 9) and right.shape == (9, 5)
    torch.testing.assert_close(left @ right, expected, rtol=0, atol=1e-12)


def test_stack_products_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="matching"):
        stack_products([torch.zeros(3, 2)], [], [1.0])
    with pytest.raises(ValueError, match="chain"):
        stack_products([torch.zeros(3, 2)], [torch.zeros(3, 4)], [1.0])


def test_compress_keeps_product_at_numerical_rank():
    # Prepare: a stack of width 6 whose product has rank 2
    gen = torch.Generator().manual_seed(1)
    left = _rand(gen, 8, 2) @ _rand(gen, 2, 6)
    right = _rand(gen, 6, 9)

    # Execute
    b, a = compress(left, right)

    # Assert
    assert b.shape == (8, 2) and a.shape == (2, 9)
    torch.testing.assert_close(b @ a, left @ right, rtol=0, atol=1e-10)


def test_compress_of_zero_product_is_rank_zero():
    b, a = compress(torch.zeros(4, 3), torch.ones(3, 5))
    assert b.shape == (4, 0) and a.shape == (0, 5)


def test_fit_rank_truncates_and_zero_pads_without_aliasing():
    # Prepare
    gen = torch.Generator().manual_seed(2)
    a, b = _rand(gen, 3, 5), _rand(gen, 4, 3)
    a_before = a.clone()

    # Execute
    a2, b2 = fit_rank(a, b, 2)
    a5, b5 = fit_rank(a, b, 5)
    a5[0, 0] = 99.0

    # Assert
    torch.testing.assert_close(b2 @ a2, b[:, :2] @ a[:2])
    torch.testing.assert_close(b5 @ a5[:, 1:], b @ a[:, 1:])
    assert torch.count_nonzero(a5[3:]) == 0 and torch.count_nonzero(b5[:, 3:]) == 0
    assert torch.equal(a, a_before)
    with pytest.raises(ValueError, match="rows"):
        fit_rank(a, b[:, :2], 2)
