"""Importance scores, Pearson kurtosis and FedSRD's adaptive sparsity ratio."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.ops.importance import (
    adaptive_ratio,
    adaptive_sparsity,
    importance_a,
    importance_b,
    pearson_kurtosis,
)

D, R = 16, 4


def rank1_norm(left_col: torch.Tensor, right_row: torch.Tensor) -> float:
    """Frobenius norm of the dense m×n matrix ``left_col ⊗ right_row`` (float64)."""
    return float(torch.linalg.norm(torch.outer(left_col.double(), right_row.double())))


def test_importance_b_is_norm_of_each_elements_rank1_contribution() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(0)
    delta_b = torch.randn(D, R, generator=gen)
    a = torch.randn(R, D + 3, generator=gen)
    # Execute
    scores = importance_b(delta_b, a)
    # Assert: ΔB[u, v] adds ΔB[u, v]·e_u ⊗ A[v, :] to ΔB·A
    ref = torch.empty(D, R, dtype=torch.float64)
    for u in range(D):
        for v in range(R):
            e_u = torch.zeros(D, dtype=torch.float64)
            e_u[u] = delta_b[u, v].double()
            ref[u, v] = rank1_norm(e_u, a[v])
    torch.testing.assert_close(scores.double(), ref, rtol=1e-6, atol=0)


def test_importance_a_is_norm_of_each_elements_rank1_contribution() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(1)
    delta_a = torch.randn(R, D, generator=gen)
    b = torch.randn(D + 5, R, generator=gen)
    # Execute
    scores = importance_a(delta_a, b)
    # Assert: ΔA[u, v] adds B[:, u] ⊗ ΔA[u, v]·e_v to B·ΔA
    ref = torch.empty(R, D, dtype=torch.float64)
    for u in range(R):
        for v in range(D):
            e_v = torch.zeros(D, dtype=torch.float64)
            e_v[v] = delta_a[u, v].double()
            ref[u, v] = rank1_norm(b[:, u], e_v)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-6, atol=0)


def test_importance_refuses_factors_that_do_not_chain() -> None:
    with pytest.raises(ValueError, match="chain"):
        importance_b(torch.ones(D, R), torch.ones(R + 1, D))
    with pytest.raises(ValueError, match="chain"):
        importance_a(torch.ones(R, D), torch.ones(D, R + 1))


def test_kurtosis_of_discrete_uniform_matches_closed_form() -> None:
    # Prepare: n equally spaced points; excess kurtosis is −6(n²+1) / (5(n²−1))
    n = 1000
    x = torch.arange(n, dtype=torch.float64) * 0.37 - 5.0
    expected = 3.0 - 6.0 * (n * n + 1) / (5.0 * (n * n - 1))
    # Execute
    kurt = pearson_kurtosis(x.reshape(10, 100))
    # Assert
    assert kurt == pytest.approx(expected, rel=1e-12)


def test_kurtosis_of_symmetric_two_point_distribution_is_one() -> None:
    assert pearson_kurtosis(torch.tensor([-2.0, 2.0] * 50)) == pytest.approx(1.0, rel=1e-12)


def test_kurtosis_of_normal_sample_is_three_within_its_standard_error() -> None:
    # Prepare: the sample kurtosis of N normal draws has standard error ≈ sqrt(24 / N)
    n = 200_000
    x = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Execute
    kurt = pearson_kurtosis(x)
    # Assert
    assert abs(kurt - 3.0) < 5 * math.sqrt(24 / n)


def test_kurtosis_of_constant_is_nan_and_gives_base_ratio() -> None:
    scores = torch.full((D, R), 0.5)
    assert math.isnan(pearson_kurtosis(scores))
    assert adaptive_sparsity(scores, 0.85, 0.1, 0.11) == 0.85


def test_kurtosis_of_empty_tensor_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        pearson_kurtosis(torch.empty(0))


@settings(max_examples=40, deadline=None)
@given(
    k1=st.floats(0.0, 1e6),
    k2=st.floats(0.0, 1e6),
    base=st.floats(0.0, 0.5),
    coeff=st.floats(0.0, 1.0),
    upper=st.floats(0.0, 0.4),
)
def test_adaptive_ratio_is_bounded_and_monotone(
    k1: float, k2: float, base: float, coeff: float, upper: float
) -> None:
    lo, hi = sorted((k1, k2))
    r_lo = adaptive_ratio(lo, base, coeff, upper)
    r_hi = adaptive_ratio(hi, base, coeff, upper)
    assert base <= r_lo <= r_hi <= base + upper + 1e-15


def test_adaptive_ratio_defaults_on_normal_and_heavy_tails() -> None:
    # normal scores (kurt 3): 0.1·ln 3 ≈ 0.1099 stays just under the cap 0.11
    assert adaptive_ratio(3.0, 0.85, 0.1, 0.11) == pytest.approx(0.85 + 0.1 * math.log(3.0))
    # a heavy tail (kurt 100: 0.1·ln 100 ≈ 0.46) is capped at base + upper
    assert adaptive_ratio(100.0, 0.85, 0.1, 0.11) == pytest.approx(0.96)
    # a light tail stays strictly inside the band
    kurt = 2.0
    assert adaptive_ratio(kurt, 0.85, 0.1, 0.11) == pytest.approx(0.85 + 0.1 * math.log(kurt))
    # kurtosis below 1 is impossible for data but must not lower rho under base
    assert adaptive_ratio(0.5, 0.85, 0.1, 0.11) == 0.85


def test_adaptive_sparsity_uses_the_scores_kurtosis() -> None:
    # Prepare: two-point scores have kurtosis exactly 1 -> rho = base; a spike raises it
    flat = torch.tensor([1.0, 3.0] * 32)
    spiky = torch.cat([torch.zeros(63), torch.ones(1)])
    # Execute / Assert
    assert adaptive_sparsity(flat, 0.5, 0.1, 0.4) == pytest.approx(0.5)
    expected = 0.5 + min(0.4, 0.1 * math.log(pearson_kurtosis(spiky)))
    assert adaptive_sparsity(spiky, 0.5, 0.1, 0.4) == pytest.approx(expected)
    assert expected > 0.5
