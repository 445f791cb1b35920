"""Least-squares factor updates in factored order against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from fedlora.ops.solve import (
    condition,
    projected_change,
    solve_a_clients,
    solve_a_terms,
    solve_a_update,
    solve_b_clients,
    solve_b_terms,
    solve_b_update,
    solve_projected,
)
from fedlora.ops.sparse import Sparse

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


# -- FedSRD-e's step from per-client products (no stack) ------------------------------------


def _sparse(x: torch.Tensor, keep: float, gen: torch.Generator) -> Sparse:
    mask = torch.rand(x.shape, generator=gen, dtype=torch.float64) < keep
    return Sparse.from_mask(x * mask, mask)


def _clients(gen: torch.Generator, a: torch.Tensor, b: torch.Tensor, scale: float, sparse: bool):
    out = []
    for p in (0.5, 0.3, 0.25):  # weights deliberately not summing to 1
        d_a = scale * torch.randn(a.shape, generator=gen, dtype=a.dtype)
        d_b = scale * torch.randn(b.shape, generator=gen, dtype=b.dtype)
        if sparse:
            out.append((p, _sparse(d_a, 0.3, gen), _sparse(d_b, 0.3, gen)))
        else:
            out.append((p, d_a, d_b))
    return out


def _factor_case(gen: torch.Generator, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 A (R×N) and B (M×R); rank-deficient: a repeated row of A and column of B."""
    a = torch.randn(R, N, generator=gen, dtype=torch.float64)
    b = torch.randn(M, R, generator=gen, dtype=torch.float64)
    if case == "rank-deficient":
        a[1], b[:, 2] = a[0], b[:, 0]
    if case == "zero-b":
        b = torch.zeros_like(b)
    return a, b


def _dense_target(a, b, clients) -> torch.Tensor:
    a, b = a.double(), b.double()
    total = -b @ a
    for p, d_a, d_b in clients:
        d_a = d_a.to_dense() if isinstance(d_a, Sparse) else d_a
        d_b = d_b.to_dense() if isinstance(d_b, Sparse) else d_b
        total = total + p * (b + d_b.double()) @ (a + d_a.double())
    return total


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("case", ["general", "rank-deficient", "zero-b"])
def test_client_steps_equal_the_pseudo_inverse_of_the_dense_target(sparse: bool, case: str) -> None:
    # Prepare: float64, M×R B and R×N A; rank-deficient: a repeated row of A and column of B
    gen = torch.Generator().manual_seed(11)
    a, b = _factor_case(gen, case)
    clients = _clients(gen, a, b, 0.5, sparse)
    target = _dense_target(a, b, clients)
    # Execute
    delta_b = solve_b_clients(a, b, clients)
    delta_a = solve_a_clients(a, b, clients)
    # Assert: against torch's dense pseudo-inverse (minimum-norm least squares)
    torch.testing.assert_close(delta_b, target @ torch.linalg.pinv(a), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(delta_a, torch.linalg.pinv(b) @ target, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6])
def test_client_steps_stay_accurate_in_float32_when_clients_barely_move(spread: float) -> None:
    # Prepare: the normal case: clients move little from one global adapter, so the target is
    # a small difference of large products; float32 inputs as the server holds them
    gen = torch.Generator().manual_seed(12)
    m, n, r = 96, 80, 6
    a = torch.randn(r, n, generator=gen)
    b = torch.randn(m, r, generator=gen)
    clients = []
    for p in (0.25, 0.25, 0.25, 0.25):
        d_a = spread * torch.randn(r, n, generator=gen)
        d_b = spread * torch.randn(m, r, generator=gen)
        clients.append((p, d_a, d_b))
    target = _dense_target(a, b, clients)
    want_b = target @ torch.linalg.pinv(a.double())
    want_a = torch.linalg.pinv(b.double()) @ target
    # Execute
    got_b = solve_b_clients(a, b, clients)
    got_a = solve_a_clients(a, b, clients)
    # Assert: relative Frobenius error against float64 dense, the bound of 1e-5
    for got, want in ((got_b, want_b), (got_a, want_a)):
        error = torch.linalg.matrix_norm(got.double() - want) / torch.linalg.matrix_norm(want)
        assert error <= 1e-5, (spread, float(error))


def test_client_steps_refuse_a_delta_of_the_wrong_shape() -> None:
    a, b = torch.randn(R, N, dtype=torch.float64), torch.randn(M, R, dtype=torch.float64)
    bad = [
        (1.0, torch.zeros(R, N + 1, dtype=torch.float64), torch.zeros(M, R, dtype=torch.float64))
    ]
    with pytest.raises(ValueError, match="does not fit"):
        solve_b_clients(a, b, bad)


# -- the Tikhonov ("ridge") solve and the condition number ------------------------------------


def _tikhonov_b(target: torch.Tensor, a: torch.Tensor, ridge: float) -> torch.Tensor:
    """Dense float64 reference: ``ΔB = ΔW·Aᵀ·(A·Aᵀ + μI)⁻¹`` with ``μ = ridge·λ_max(A·Aᵀ)``."""
    gram = a @ a.T
    mu = ridge * float(torch.linalg.eigvalsh(gram).max())
    return target @ a.T @ torch.linalg.inv(gram + mu * torch.eye(gram.shape[0], dtype=a.dtype))


def _tikhonov_a(target: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = b.T @ b
    mu = ridge * float(torch.linalg.eigvalsh(gram).max())
    return torch.linalg.inv(gram + mu * torch.eye(gram.shape[0], dtype=b.dtype)) @ b.T @ target


@pytest.mark.parametrize("ridge", [1e-3, 0.1])
def test_ridge_solves_are_the_tikhonov_solution(ridge: float) -> None:
    # Prepare: an ill-conditioned A and B (one direction 1e-4 of the others)
    gen = torch.Generator().manual_seed(21)
    a = torch.randn(R, N, generator=gen, dtype=torch.float64)
    b = torch.randn(M, R, generator=gen, dtype=torch.float64)
    a[3] = a[0] + 1e-4 * a[3]
    b[:, 3] = b[:, 0] + 1e-4 * b[:, 3]
    left, right = _factors(22)
    clients = _clients(gen, a, b, 0.5, sparse=True)
    target = _dense_target(a, b, clients)
    # Execute / Assert: the stacked-target solves and the per-client ones (FedSRD-e)
    torch.testing.assert_close(
        solve_b_terms([(left, right)], a, ridge), _tikhonov_b(left @ right, a, ridge)
    )
    torch.testing.assert_close(
        solve_a_terms([(left, right)], b, ridge), _tikhonov_a(left @ right, b, ridge)
    )
    torch.testing.assert_close(solve_b_clients(a, b, clients, ridge), _tikhonov_b(target, a, ridge))
    torch.testing.assert_close(solve_a_clients(a, b, clients, ridge), _tikhonov_a(target, b, ridge))


def test_ridge_bounds_the_gain_of_an_ill_conditioned_factor() -> None:
    # Prepare: B with singular values 1 and 1e-6: the pseudo-inverse amplifies by 1e6
    b = torch.zeros(M, 2, dtype=torch.float64)
    b[0, 0], b[1, 1] = 1.0, 1e-6
    left = torch.zeros(M, 1, dtype=torch.float64)
    left[1, 0] = 1.0
    right = torch.ones(1, N, dtype=torch.float64)
    # Execute
    plain = solve_a_terms([(left, right)], b)
    ridged = solve_a_terms([(left, right)], b, 1e-4)
    # Assert: gain σ/(σ² + μ) ≤ 1/(2√μ) = 50 for μ = 1e-4 (σ_max = 1)
    assert float(plain.abs().max()) == pytest.approx(1e6, rel=1e-6)
    assert float(ridged.abs().max()) <= 50.0


def test_condition_is_the_ratio_of_extreme_singular_values() -> None:
    gen = torch.Generator().manual_seed(5)
    for matrix in (torch.randn(M, R, generator=gen), torch.randn(R, N, generator=gen)):
        s = torch.linalg.svdvals(matrix.double())
        assert condition(matrix) == pytest.approx(float(s[0] / s[-1]), rel=1e-4)
    assert condition(torch.zeros(M, R)) == 1.0


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("case", ["general", "rank-deficient", "zero-b"])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_the_sum_of_per_client_projections_gives_the_same_step(
    sparse: bool, case: str, ridge: float
) -> None:
    # Prepare: as above with weights summing to 1 (the server's); each client's term is
    # computed alone, as it would be on the client
    gen = torch.Generator().manual_seed(12)
    a, b = _factor_case(gen, case)
    raw = _clients(gen, a, b, 0.5, sparse)
    clients = [(p / sum(q for q, _, _ in raw), d_a, d_b) for p, d_a, d_b in raw]  # sum to 1
    target = _dense_target(a, b, clients)
    # Execute: the server sees only the weighted sums
    summed_b = sum(p * projected_change(a, b, d_a, d_b, "B") for p, d_a, d_b in clients)
    summed_a = sum(p * projected_change(a, b, d_a, d_b, "A") for p, d_a, d_b in clients)
    delta_b = solve_projected(summed_b, a, b, "B", ridge)
    delta_a = solve_projected(summed_a, a, b, "A", ridge)
    # Assert: the terms are the dense target seen through the fixed factor, and the steps
    # equal the per-client solves (and, without ridge, torch's dense pseudo-inverse)
    torch.testing.assert_close(summed_b, target @ a.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(summed_a, b.T @ target, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(delta_b, solve_b_clients(a, b, clients, ridge), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(delta_a, solve_a_clients(a, b, clients, ridge), rtol=1e-9, atol=1e-9)
    if ridge == 0.0:
        torch.testing.assert_close(delta_b, target @ torch.linalg.pinv(a), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(delta_a, torch.linalg.pinv(b) @ target, rtol=1e-9, atol=1e-9)
