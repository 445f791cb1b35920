"""Quantile / magnitude / DARE masks, the pruning rescale and seed derivation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.ops.masks import (
    dare,
    dare_dense,
    dare_mask,
    magnitude_mask,
    quantile_mask,
    quantile_threshold,
    rescale_pruned,
)
from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.seeds import label_seed

D, R = 16, 4


def reference_mask(scores: torch.Tensor, rho: float) -> torch.Tensor:
    """The rule spelled out with torch.quantile (linear) on small inputs: rho = 0 keeps all;
    rho capped at (N-1)/N; strictly above q; the tied maximum when nothing is above."""
    if rho == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    n = scores.numel()
    q = torch.quantile(scores.reshape(-1).double(), min(rho, (n - 1) / n))
    mask = scores.double() > q
    return mask if bool(mask.any()) else scores == scores.max()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    rho=st.floats(0.0, 1.0),
    levels=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantile_mask_matches_torch_quantile_linear_strict(
    n: int, rho: float, levels: int, seed: int
) -> None:
    # Prepare: few distinct levels so ties at the threshold are common
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n,), generator=gen).double() / levels
    # Execute
    mask = quantile_mask(scores, rho)
    # Assert
    assert torch.equal(mask, reference_mask(scores, rho))
    assert bool(mask.any())


def test_threshold_equals_torch_quantile_on_float64() -> None:
    scores = torch.rand(97, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for rho in (0.0, 0.1, 0.5, 0.85, 0.96, 1.0):
        expected = torch.quantile(scores, rho)
        assert float(quantile_threshold(scores, rho)) == pytest.approx(float(expected), abs=1e-15)


def test_distinct_scores_keep_n_minus_ceil_h_elements() -> None:
    # Prepare
    scores = torch.randperm(D * R, generator=torch.Generator().manual_seed(0)).float()
    n = scores.numel()
    for rho in (0.3, 0.85, 0.96):
        # Execute
        mask = quantile_mask(scores.reshape(D, R), rho)
        # Assert: the kept ones are the largest; strictly above x_(h) keeps N - 1 - floor(h)
        # when h is fractional (x_(floor h) itself is below the interpolated q)
        h = rho * (n - 1)
        kept = n - 1 - math.floor(h)
        assert mask.shape == (D, R)
        assert int(mask.sum()) == kept
        assert scores.reshape(D, R)[mask].min() > scores.reshape(D, R)[~mask].max()


def test_strict_rule_drops_an_exact_threshold_tie() -> None:
    scores = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0])
    # the 0.5-quantile of 5 values is x_(2) = 1.0 exactly: only 2.0 is strictly above
    assert quantile_mask(scores, 0.5).tolist() == [False, False, False, False, True]
    # constant scores: nothing is above the quantile, so the tied maximum (all) is kept
    assert bool(quantile_mask(torch.full((D, R), 3.0), 0.9).all())


def test_at_least_one_element_survives_any_ratio() -> None:
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert quantile_mask(scores, 1.0).tolist() == [False, False, True, False]
    assert quantile_mask(scores, 0.99).tolist() == [False, False, True, False]
    assert quantile_mask(torch.tensor([2.0, 7.0, 7.0]), 0.99).tolist() == [False, True, True]


def test_rho_zero_keeps_everything() -> None:
    scores = torch.randn(D, R, generator=torch.Generator().manual_seed(1)).abs()
    assert bool(quantile_mask(scores, 0.0).all())


def test_quantile_refuses_bad_ratio_and_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="rho"):
        quantile_mask(torch.ones(4), 1.01)
    with pytest.raises(ValueError, match="rho"):
        quantile_mask(torch.ones(4), -0.1)
    with pytest.raises(ValueError, match="finite"):
        quantile_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        quantile_mask(torch.tensor([1.0, float("nan")]), 0.0)


def test_quantile_mask_works_above_torch_quantile_limit() -> None:
    # Prepare: 2^24 + 3 scores (torch.quantile refuses more than 2^24 elements) cycling
    # through the exact values 0..999, so the order statistics follow from counting
    n, levels, rho = (1 << 24) + 3, 1000, 0.9
    scores = (torch.arange(n, dtype=torch.int32) % levels).float()
    counts = [(n - 1 - v) // levels + 1 for v in range(levels)]  # occurrences of value v
    h = rho * (n - 1)

    def order_statistic(j: int) -> int:
        below = 0
        for v, c in enumerate(counts):
            if below + c > j:
                return v
            below += c
        raise AssertionError("rank out of range")

    lo = math.floor(h)
    x_lo, x_hi = order_statistic(lo), order_statistic(lo + 1)
    q = x_lo + (h - lo) * (x_hi - x_lo)
    # Execute
    mask = quantile_mask(scores, rho)
    # Assert
    assert float(quantile_threshold(scores, rho)) == pytest.approx(q, abs=1e-3)
    assert int(mask.sum()) == sum(c for v, c in enumerate(counts) if v > q)


def test_magnitude_mask_keeps_largest_magnitudes() -> None:
    values = torch.tensor([-5.0, 0.1, 3.0, -0.2, 0.05, 4.0])
    mask = magnitude_mask(values, 0.5)
    assert torch.equal(mask, quantile_mask(values.abs(), 0.5))
    # |values| sorted: 0.05 0.1 0.2 3 4 5; the 0.5-quantile is (0.2 + 3) / 2 = 1.6
    assert mask.tolist() == [True, False, True, False, False, True]


def test_dare_mask_is_the_portable_seeded_mask() -> None:
    mask = dare_mask(42, (D, R), 0.9)
    assert mask.shape == (D, R)
    assert torch.equal(mask.reshape(-1), seeded_keep_mask(42, D * R, 0.1))
    assert torch.equal(mask, dare_mask(42, (D, R), 0.9))
    assert not torch.equal(mask, dare_mask(43, (D, R), 0.9))


def test_dare_rescales_survivors_and_carries_its_seed() -> None:
    # Prepare
    delta = torch.randn(D, R, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # Execute
    sparse = dare(delta, 0.75, 7)
    # Assert
    mask = dare_mask(7, (D, R), 0.75)
    assert sparse.mask_seed == 7 and sparse.keep_prob == pytest.approx(0.25)
    assert torch.equal(sparse.indices, mask.reshape(-1).nonzero().reshape(-1))
    expected = torch.where(mask, delta * 4.0, torch.zeros_like(delta))
    torch.testing.assert_close(sparse.to_dense(), expected, rtol=1e-15, atol=0)


def test_dare_is_unbiased_within_its_standard_error() -> None:
    # Prepare: each element of DARE(δ) is δ/(1−p) w.p. 1−p, else 0, so its variance is
    # δ²·p/(1−p); the mean of S independent draws has standard deviation |δ|·sqrt(p/((1−p)S)).
    p, draws = 0.9, 400
    delta = torch.randn(D, R, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Execute
    total = torch.zeros_like(delta)
    for s in range(draws):
        total += dare(delta, p, label_seed("unbiased", s)).to_dense()
    mean = total / draws
    # Assert: every element's z-score is within 5 sd (false alarm chance < 1e-4 for 64
    # elements) and the z-scores' mean square is near its expectation 1
    sd = delta.abs() * math.sqrt(p / ((1 - p) * draws))
    z = (mean - delta) / sd
    assert float(z.abs().max()) < 5.0
    assert abs(float((z * z).mean()) - 1.0) < 5 * math.sqrt(2 / z.numel())


def test_rescale_preserves_total_magnitude() -> None:
    # Prepare
    original = torch.randn(D, R, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pruned = torch.where(magnitude_mask(original, 0.8), original, torch.zeros_like(original))
    # Execute
    rescaled = rescale_pruned(original, pruned)
    # Assert: same support, positive factor, L1 norm of the original
    assert torch.equal(rescaled != 0, pruned != 0)
    assert float(rescaled.abs().sum()) == pytest.approx(float(original.abs().sum()), rel=1e-12)
    ratio = rescaled[pruned != 0] / pruned[pruned != 0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and float(ratio[0]) > 1.0


def test_rescale_of_nothing_kept_is_zero() -> None:
    out = rescale_pruned(torch.ones(D, R), torch.zeros(D, R))
    assert torch.equal(out, torch.zeros(D, R))


def test_rescale_skips_a_vanishing_pruned_sum() -> None:
    # Prepare: the kept mass is below the authors' 1e-9 guard, the original's is not
    original = torch.ones(D, R, dtype=torch.float64)
    pruned = torch.zeros(D, R, dtype=torch.float64)
    pruned[0, 0] = 1e-10
    # Execute / Assert: left unscaled (a 1e11x blow-up would be the alternative)
    assert torch.equal(rescale_pruned(original, pruned), pruned)
    pruned[0, 0] = 1e-8
    assert float(rescale_pruned(original, pruned).abs().sum()) == pytest.approx(D * R)


def test_dense_dare_is_the_sparse_dare_bit_for_bit() -> None:
    delta = torch.randn(D, R, generator=torch.Generator().manual_seed(4))
    for drop in (0.0, 0.8, 0.95):
        want = dare(delta, drop, 42).to_dense()
        got = dare_dense(delta, drop, 42)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), drop


def test_dare_dense_keeps_the_delta_on_its_own_device() -> None:
    # The seeded mask is built on the CPU; a server step on a GPU passes a GPU delta. The
    # meta device stands in for any device that is not the CPU.
    from fedlora.ops.masks import dare_dense

    out = dare_dense(torch.empty(6, 5, device="meta"), 0.5, seed=3)
    assert out.device.type == "meta" and out.shape == (6, 5)
