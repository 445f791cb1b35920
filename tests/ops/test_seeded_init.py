"""Portable seeded uniform init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlora.ops.prng import splitmix64
from fedlora.ops.seeded_init import portable_uniform


def test_portable_uniform_is_the_documented_map_of_splitmix64():
    # Prepare: the reference computed straight from the stream definition
    raw = splitmix64(42, 5, 12)
    expected = np.array([-0.5 + 1.5 * (int(x) >> 11) / 2.0**53 for x in raw], dtype=np.float32)

    # Execute
    out = portable_uniform(42, (3, 4), -0.5, 1.0, start=5)

    # Assert
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    assert torch.equal(out, torch.from_numpy(expected.reshape(3, 4)))


def test_portable_uniform_range_determinism_and_independent_offsets():
    a = portable_uniform(7, (50, 40), -0.25, 0.25)
    assert torch.equal(a, portable_uniform(7, (50, 40), -0.25, 0.25))
    assert float(a.min()) >= -0.25 and float(a.max()) < 0.25
    assert abs(float(a.mean())) < 0.02  # 2000 draws: sd of the mean ≈ 0.003
    assert not torch.equal(a, portable_uniform(7, (50, 40), -0.25, 0.25, start=2000))
    assert not torch.equal(a, portable_uniform(8, (50, 40), -0.25, 0.25))
    with pytest.raises(ValueError, match="low < high"):
        portable_uniform(0, (2,), 1.0, 1.0)
