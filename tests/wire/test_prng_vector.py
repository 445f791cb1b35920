"""The portable PRNG behind seeded masks gives the same stream as SplitMix64 by definition.

A seed-coded sparse payload is only correct if sender and receiver regenerate the same
mask, on any platform and library version; these vectors pin the stream to integer
arithmetic that no library can change.
"""

from __future__ import annotations

import numpy as np

from fedlora.ops import prng
from fedlora.ops.prng import seeded_keep_mask, splitmix64

MASK64 = (1 << 64) - 1


def reference_splitmix64(seed: int, count: int) -> list[int]:
    """SplitMix64 (Steele, Lea, Flood 2014) written with Python integers, independent of numpy."""
    state = seed & MASK64
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def test_first_output_for_seed_zero_matches_published_value() -> None:
    # Prepare: the published first SplitMix64 output for seed 0.
    published = 0xE220A8397B1DCDAF

    # Execute
    ours = int(splitmix64(0, 0, 1)[0])

    # Assert
    assert ours == published
    assert reference_splitmix64(0, 1)[0] == published


def test_stream_matches_integer_reference_for_several_seeds_and_offsets() -> None:
    for seed in (0, 1, 42, 2**63 + 12345, MASK64):
        # Prepare
        expected = reference_splitmix64(seed, 40)

        # Execute
        whole = [int(v) for v in splitmix64(seed, 0, 40)]
        tail = [int(v) for v in splitmix64(seed, 25, 15)]

        # Assert
        assert whole == expected
        assert tail == expected[25:]


def test_keep_mask_follows_top_53_bits_rule() -> None:
    # Prepare: the rule stated in prng.py, evaluated with integers only.
    seed, numel, keep = 2024, 300, 0.3
    threshold = int(keep * (1 << 53))
    expected = [(v >> 11) < threshold for v in reference_splitmix64(seed, numel)]

    # Execute
    mask = seeded_keep_mask(seed, numel, keep).numpy()

    # Assert
    assert mask.tolist() == expected
    assert 0 < int(np.count_nonzero(mask)) < numel


def test_stream_and_mask_are_the_same_across_the_vectorised_chunks() -> None:
    # Prepare: positions on both sides of every chunk boundary of a 2.5-chunk stream, and a
    # keep probability whose 53-bit threshold is exact, so the rule can be checked in integers
    seed, keep = 77, 0.375
    numel = 2 * prng._CHUNK + prng._CHUNK // 2
    threshold = int(keep * (1 << 53))
    probes = [0, 1, prng._CHUNK - 1, prng._CHUNK, prng._CHUNK + 1, 2 * prng._CHUNK, numel - 1]
    # Execute
    stream = splitmix64(seed, 0, numel)
    mask = seeded_keep_mask(seed, numel, keep).numpy()
    # Assert: each probe equals the integer reference started at that position
    for i in probes:
        (expected,) = reference_splitmix64((seed + i * 0x9E3779B97F4A7C15) & MASK64, 1)
        assert int(stream[i]) == expected, i
        assert bool(mask[i]) == ((expected >> 11) < threshold), i
    assert [int(v) for v in splitmix64(seed, prng._CHUNK - 3, 6)] == [
        int(v) for v in stream[prng._CHUNK - 3 : prng._CHUNK + 3]
    ]


def test_keep_probability_one_and_zero() -> None:
    assert seeded_keep_mask(5, 1000, 1.0).all()
    assert not seeded_keep_mask(5, 1000, 0.0).any()
