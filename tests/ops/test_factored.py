"""The factored SVD kernel against dense float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.ops.factored import energy_rank, factored_svd, numerical_rank, truncated_factors


def _factors(seed: int, m: int, n: int, q: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 L (m×q), R (q×n) whose product has rank <= ``rank``."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(m, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, q, generator=gen, dtype=torch.float64
    )
    right = torch.randn(q, n, generator=gen, dtype=torch.float64)
    return left, right


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    q=st.integers(1, 6),
    deficit=st.integers(0, 3),
)
def test_factored_svd_equals_dense_svd_on_nonzero_triplets(seed, m, n, q, deficit):
    # Prepare: a product of rank q - deficit (rank-deficient when deficit > 0)
    left, right = _factors(seed, m, n, q, max(q - deficit, 1))
    dense = left @ right
    u_ref, s_ref, vh_ref = torch.linalg.svd(dense, full_matrices=False)
    k = numerical_rank(s_ref, 1e-9)

    # Execute
    u, s, v = factored_svd(left, right)

    # Assert: same nonzero spectrum, the rest is noise, same singular subspaces
    scale = float(s_ref[0]) if s_ref.numel() else 1.0
    assert s.shape[0] == min(q, m, n)
    torch.testing.assert_close(s[:k], s_ref[:k], rtol=1e-9, atol=1e-9 * scale)
    assert all(float(x) <= 1e-9 * max(scale, 1.0) for x in s[k:].abs())
    torch.testing.assert_close((u * s) @ v.T, dense, rtol=0, atol=1e-9 * max(scale, 1.0))
    eye = torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(u[:, :k].T @ u[:, :k], eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(v[:, :k].T @ v[:, :k], eye, rtol=0, atol=1e-9)
    # Projectors onto the top-k subspaces do not depend on signs or rotations.
    torch.testing.assert_close(
        u[:, :k] @ u[:, :k].T, u_ref[:, :k] @ u_ref[:, :k].T, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(v[:, :k] @ v[:, :k].T, vh_ref[:k].T @ vh_ref[:k], rtol=0, atol=1e-7)


def test_factored_svd_rejects_factors_that_do_not_chain():
    with pytest.raises(ValueError, match="do not chain"):
        factored_svd(torch.zeros(4, 2), torch.zeros(3, 5))


def _energy_rank_reference(values: list[float], tau: float) -> int:
    """Independent loop: smallest k with cumulative energy share >= tau."""
    kept = [v for v in values if v > values[0] * 1e-7]
    total = sum(v * v for v in kept)
    acc = 0.0
    for k, v in enumerate(kept, start=1):
        acc += v * v
        if acc / total >= tau - 1e-15:
            return k
    return len(kept)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=10),
    tau=st.floats(0.05, 1.0),
)
def test_energy_rank_matches_reference_loop(values, tau):
    # Prepare
    values = sorted(values, reverse=True)
    s = torch.tensor(values, dtype=torch.float64)

    # Execute
    k = energy_rank(s, tau)

    # Assert
    assert k == _energy_rank_reference(values, tau)


def test_energy_rank_hand_example_and_noise_cutoff():
    # Prepare: energies 9, 4, 1 (total 14) and a float-noise tail
    s = torch.tensor([3.0, 2.0, 1.0, 3e-8], dtype=torch.float64)

    # Execute / Assert
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.65) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3  # the 3e-8 value is below S_1·1e-7: not rank
    assert energy_rank(torch.zeros(3), 0.9) == 0


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_energy_rank_rejects_tau_outside_unit_interval(tau):
    with pytest.raises(ValueError, match="tau"):
        energy_rank(torch.ones(3), tau)


@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_truncated_factors_equal_dense_truncated_svd(rank):
    # Prepare
    left, right = _factors(7, 10, 9, 4, 4)
    u, s, vh = torch.linalg.svd(left @ right, full_matrices=False)
    k = min(rank, 4)
    expected = (u[:, :k] * s[:k]) @ vh[:k]

    # Execute
    b, a = truncated_factors(left, right, rank)

    # Assert
    assert b.shape == (10, k) and a.shape == (k, 9)
    torch.testing.assert_close(b @ a, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(a @ a.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6, 0.0])
def test_truncated_factors_on_nearly_collinear_stacks(spread):
    # Prepare: the normal case, in float32 as the server runs it: K = 4 clients start from one
    # global adapter (B, A) and move by `spread`, so the stacked columns are nearly collinear
    # (spread 0: exactly dependent, rank r instead of K·r).
    gen = torch.Generator().manual_seed(7)
    m, n, r, k_clients = 96, 80, 6, 4
    b = torch.randn(m, r, generator=gen)
    a = torch.randn(r, n, generator=gen) / 10
    lefts = [b + spread * torch.randn(m, r, generator=gen) for _ in range(k_clients)]
    rights = [(a + spread * torch.randn(r, n, generator=gen)) / k_clients for _ in lefts]
    left, right = torch.cat(lefts, dim=1), torch.cat(rights, dim=0)
    dense = left.double() @ right.double()
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    for rank in (r, 2 * r):
        want = (u[:, :rank] * s[:rank]) @ vh[:rank]
        # Execute
        us, vt = truncated_factors(left, right, rank)
        # Assert: a bound of 1e-5 on the relative Frobenius error against float64 dense
        error = torch.linalg.matrix_norm(
            us.double() @ vt.double() - want
        ) / torch.linalg.matrix_norm(want)
        assert error <= 1e-5, (spread, rank, float(error))


@pytest.mark.parametrize("spread", [1e-2, 1e-6])
def test_column_weights_equal_a_scaled_left_factor(spread):
    # Prepare: FedSRD's weighted stack W = [B_1 … B_K]·diag(p_k)·[A_1; …; A_K], float32
    gen = torch.Generator().manual_seed(8)
    m, n, r = 64, 50, 5
    b, a = torch.randn(m, r, generator=gen), torch.randn(r, n, generator=gen)
    left = torch.cat([b + spread * torch.randn(m, r, generator=gen) for _ in range(3)], dim=1)
    right = torch.cat([a + spread * torch.randn(r, n, generator=gen) for _ in range(3)], dim=0)
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64).repeat_interleave(r)
    dense = (left.double() * weights) @ right.double()
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    for rank in (r, 2 * r):
        want = (u[:, :rank] * s[:rank]) @ vh[:rank]
        # Execute
        us, vt = truncated_factors(left, right, rank, weights)
        # Assert
        error = torch.linalg.matrix_norm(
            us.double() @ vt.double() - want
        ) / torch.linalg.matrix_norm(want)
        assert error <= 1e-5, (spread, rank, float(error))
    with pytest.raises(ValueError, match="weights"):
        truncated_factors(left, right, r, weights[:-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_batched_truncation_equals_one_call_per_product(dtype: torch.dtype) -> None:
    # Prepare: four weighted products of one shape, one of them rank-deficient, one zero
    gen = torch.Generator().manual_seed(9)
    batch, m, q, n, rank = 4, 40, 12, 30, 5
    left = torch.randn(batch, m, q, generator=gen, dtype=dtype)
    right = torch.randn(batch, q, n, generator=gen, dtype=dtype)
    left[1, :, 6:] = left[1, :, :6]  # rank 6 at most
    left[3] = 0.0
    weights = torch.rand(batch, q, generator=gen, dtype=torch.float64)
    # Execute
    us, vt = truncated_factors(left, right, rank, weights)
    # Assert: each entry is what the 2-D call gives, to float error; the zero one is zero
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for i in range(batch):
        want_us, want_vt = truncated_factors(left[i], right[i], rank, weights[i])
        got, want = us[i].double() @ vt[i].double(), want_us.double() @ want_vt.double()
        scale = max(float(torch.linalg.matrix_norm(want)), 1.0)
        assert float(torch.linalg.matrix_norm(got - want)) <= tol * scale, i
    assert torch.equal(us[3], torch.zeros_like(us[3]))
    with pytest.raises(ValueError, match="batches differ"):
        truncated_factors(left, right[:2], rank)
