"""Secure aggregation's arithmetic: masks cancel in the sum, fixed point is unbiased and exact
inside its range, and every mask is expanded from the whole secret."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from fedlora.runtime.masking import (
    add_mod,
    expand_mask,
    fits,
    from_fixed,
    sub_mod,
    to_fixed,
    word_dtype,
)


@pytest.mark.parametrize("bits", [24, 32, 40, 64])
def test_pairwise_masks_cancel_and_the_sum_comes_back_within_rounding(bits: int) -> None:
    # Prepare: 4 clients' vectors of both signs, a pairwise secret per pair
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.5, size=(4, 257))
    scale, count = 2.0**12, values.shape[1]
    secrets = {(i, j): rng.bytes(32) for i in range(4) for j in range(i + 1, 4)}
    # Execute: each client masks its fixed-point vector (+ toward higher ids, − toward lower)
    masked = []
    for k in range(4):
        word = to_fixed(values[k], scale, bits, rng)
        for (i, j), secret in secrets.items():
            if k in (i, j):
                mask = expand_mask(secret, count, bits)
                word = add_mod(word, mask, bits) if k == i else sub_mod(word, mask, bits)
        masked.append(word)
    total = masked[0]
    for word in masked[1:]:
        total = add_mod(total, word, bits)
    # Assert: what travels is the modulus' width; the sum is the plain sum within rounding
    assert all(w.dtype == word_dtype(bits) for w in masked)
    assert word_dtype(bits).itemsize == (4 if bits <= 32 else 8)
    got = from_fixed(total, scale, bits)
    assert np.abs(got - values.sum(axis=0)).max() <= 4 / scale
    assert not np.allclose(from_fixed(masked[0], scale, bits), values[0], atol=1)


def test_two_secrets_with_the_same_32_bit_fold_give_unrelated_masks() -> None:
    # Prepare: a second secret that XORs the same word into two 4-byte blocks (the fold cancels)
    first = bytes(range(32))
    tweak = int.to_bytes(0xDEADBEEF, 4, "little")
    second = bytearray(first)
    for start in (0, 4):
        second[start : start + 4] = bytes(
            x ^ y for x, y in zip(first[start : start + 4], tweak, strict=True)
        )
    second_secret = bytes(second)
    # Execute
    ours = expand_mask(first, 4096, 32), expand_mask(second_secret, 4096, 32)
    flowers = (
        pseudo_rand_gen(first, 2**31, [(4096,)]),
        pseudo_rand_gen(second_secret, 2**31, [(4096,)]),
    )
    # Assert: Flower's expansion repeats (the weakness); ours shares no more than chance
    assert np.array_equal(flowers[0][0], flowers[1][0])
    assert (ours[0] == ours[1]).mean() < 0.01
    assert abs(np.corrcoef(ours[0].astype(float), ours[1].astype(float))[0, 1]) < 0.1


def test_a_mask_is_uniform_over_the_modulus() -> None:
    mask = expand_mask(b"k" * 32, 200_000, 24)
    assert mask.max() < 2**24
    counts = np.bincount((mask >> 20).astype(np.int64), minlength=16)  # 16 equal bins
    assert np.abs(counts / counts.mean() - 1).max() < 0.05


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    values = np.full(40_000, 0.3)
    rounded = from_fixed(to_fixed(values, 1.0, 32, rng), 1.0, 32)
    assert set(np.unique(rounded)) == {0.0, 1.0}
    assert abs(rounded.mean() - 0.3) < 0.01
    negative = from_fixed(to_fixed(-values, 1.0, 32, rng), 1.0, 32)
    assert set(np.unique(negative)) == {-1.0, 0.0} and abs(negative.mean() + 0.3) < 0.01


def test_values_that_do_not_fit_are_refused_and_fits_says_when_a_sum_is_exact() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="does not fit 16 bits"):
        to_fixed(np.array([1.0]), 2.0**15, 16, rng)
    with pytest.raises(ValueError, match="finite"):
        to_fixed(np.array([np.nan]), 1.0, 32, rng)
    assert fits(1.0, 2.0**20, 16, 32) and not fits(1.0, 2.0**28, 16, 32)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        expand_mask(b"short", 4, 32)
    with pytest.raises(ValueError, match=r"\[8, 64\]"):
        word_dtype(65)
