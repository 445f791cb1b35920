"""Least-squares factor updates in factored order against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from fedlora.ops.solve import solve_a_terms, solve_a_update, solve_b_terms, solve_b_update

M, N, R, Q = 16, 12, 4, 6


def _factors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(M, Q, generator=gen, dtype=torch.float64),
        torch.randn(Q, N, generator=gen, dtype=torch.float64),
    )


def test_b_update_solves_the_normal_equations() -> None:
    # Prepare
    left, right = _factors(0)
    a = torch.randn(R, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = left @ right
    # Execute
    delta_b = solve_b_update(left, right, a)
    # Assert: ΔB·A·Aᵀ = ΔW·Aᵀ (least squares with full-row-rank A)
    assert delta_b.shape == (M, R)
    torch.testing.assert_close(delta_b @ a @ a.T, target @ a.T, rtol=1e-10, atol=1e-10)


def test_a_update_solves_the_normal_equations() -> None:
    # Prepare
    left, right = _factors(2)
    b = torch.randn(M, R, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = left @ right
    # Execute
    delta_a = solve_a_update(left, right, b)
    # Assert: Bᵀ·B·ΔA = Bᵀ·ΔW
    assert delta_a.shape == (R, N)
    torch.testing.assert_close(b.T @ b @ delta_a, b.T @ target, rtol=1e-10, atol=1e-10)


def test_zero_factor_gives_zero_update() -> None:
    left, right = _factors(4)
    assert torch.equal(
        solve_a_update(left, right, torch.zeros(M, R, dtype=torch.float64)),
        torch.zeros(R, N, dtype=torch.float64),
    )


def test_shapes_must_chain() -> None:
    left, right = _factors(5)
    with pytest.raises(ValueError):
        solve_b_update(left, right, torch.ones(R, N + 1, dtype=torch.float64))
    with pytest.raises(ValueError):
        solve_a_update(left, right, torch.ones(M + 1, R, dtype=torch.float64))
    with pytest.raises(ValueError):
        solve_a_update(left, right.T, torch.ones(M, R, dtype=torch.float64))


def test_a_target_given_as_several_products_equals_its_stack() -> None:
    # Prepare: ΔW = L1 R1 − B A (FedSRD's target less the previous product), never stacked
    torch.manual_seed(3)
    l1, r1 = torch.randn(M, 4, dtype=torch.float64), torch.randn(4, N, dtype=torch.float64)
    b, a = torch.randn(M, R, dtype=torch.float64), torch.randn(R, N, dtype=torch.float64)
    terms = [(l1, r1), (-b, a)]
    dense = l1 @ r1 - b @ a
    # Execute / Assert: against the dense float64 pseudo-inverse
    torch.testing.assert_close(solve_b_terms(terms, a), dense @ torch.linalg.pinv(a))
    torch.testing.assert_close(solve_a_terms(terms, b), torch.linalg.pinv(b) @ dense)
