"""Position codes: exact round trips, smallest-code choice, the 1.10x information bound."""

from __future__ import annotations

import contextlib
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch

from fedlora.ops.sparse import Sparse
from fedlora.wire import encode_with_stats
from fedlora.wire import framing as F
from fedlora.wire import positions as P

CODES = {
    "bitmap": P.encode_bitmap,
    "elias-fano": P.encode_elias_fano,
    "rice": P.encode_rice,
    "zstd-gaps": P.encode_zstd_gaps,
}


def random_positions(numel: int, nnz: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(numel, size=nnz, replace=False)).astype(np.int64)


@pytest.mark.parametrize("code", sorted(CODES))
@pytest.mark.parametrize(
    ("numel", "nnz"), [(1, 0), (1, 1), (7, 3), (64, 64), (1000, 1), (1000, 17), (4096, 2000)]
)
def test_every_code_round_trips(code: str, numel: int, nnz: int) -> None:
    # Prepare
    idx = random_positions(numel, nnz, seed=numel + nnz)

    # Execute
    enc = CODES[code](idx, numel)
    back = P.decode_positions(enc.encoding, enc.params, enc.data, numel, nnz)

    # Assert
    assert enc.encoding == code
    np.testing.assert_array_equal(back, idx)


def test_clustered_positions_round_trip_through_every_code() -> None:
    # Prepare: a run of consecutive positions, then one far away (gaps of 0 and a huge gap).
    numel = 100_000
    idx = np.concatenate([np.arange(10, 500), [99_999]]).astype(np.int64)

    for code, fn in CODES.items():
        # Execute
        enc = fn(idx, numel)
        back = P.decode_positions(enc.encoding, enc.params, enc.data, numel, idx.size)

        # Assert
        np.testing.assert_array_equal(back, idx, err_msg=code)


@pytest.mark.parametrize("density", [0.001, 0.02, 0.3, 0.5, 0.9])
def test_encoder_picks_the_smallest_code(density: float) -> None:
    # Prepare
    numel = 50_000
    idx = random_positions(numel, int(numel * density), seed=3)
    sizes = {code: len(fn(idx, numel).data) for code, fn in CODES.items()}

    # Execute
    chosen = F.encode_smallest(idx, numel)

    # Assert
    assert len(chosen.data) == min(sizes.values())
    assert sizes[chosen.encoding] == len(chosen.data)


def test_dense_masks_choose_bitmap_and_sparse_masks_a_delta_code() -> None:
    numel = 1 << 16
    assert F.encode_smallest(random_positions(numel, numel // 2, 1), numel).encoding == "bitmap"
    assert F.encode_smallest(random_positions(numel, numel // 100, 1), numel).encoding != "bitmap"


@pytest.mark.parametrize("density", [0.01, 0.05, 0.10, 0.20, 0.50])
def test_sparse_payload_costs_at_most_1_10_of_information_bound(density: float) -> None:
    # Prepare: a realistic layer size, float32 values.
    numel = 1 << 20
    nnz = int(numel * density)
    idx = torch.from_numpy(random_positions(numel, nnz, seed=11))
    sparse = Sparse((1024, 1024), idx, torch.randn(nnz))
    bound_bits = (
        math.lgamma(numel + 1) - math.lgamma(nnz + 1) - math.lgamma(numel - nnz + 1)
    ) / math.log(2) + 32 * nnz

    # Execute: the whole buffer, container header included.
    buf, stats = encode_with_stats({"layer.B": sparse})

    # Assert
    assert 8 * len(buf) <= 1.10 * bound_bits
    assert (ratio := stats.sparse_bound_ratio()) is not None and ratio <= 1.10


def test_information_bound_matches_exact_binomial_on_small_cases() -> None:
    for numel, nnz in [(10, 3), (64, 32), (100, 1), (5, 0)]:
        assert P.information_bound_bits(numel, nnz) == pytest.approx(
            math.log2(math.comb(numel, nnz)), abs=1e-9
        )


def test_million_element_tensor_round_trips_in_every_code() -> None:
    # Prepare (speed is measured by the server benchmark, not asserted here)
    numel = 1 << 20
    idx = random_positions(numel, numel // 10, seed=5)

    # Execute / Assert: all three codes, both directions, exact
    for name, fn in CODES.items():
        enc = fn(idx, numel)
        back = P.decode_positions(enc.encoding, enc.params, enc.data, numel, idx.size)
        assert np.array_equal(back, idx), name


def test_elias_fano_rejects_unsorted_positions() -> None:
    # Prepare: two positions with the same high part whose low parts decrease.
    numel, low_bits = 64, 3
    lows = [5, 2]  # both with high part 0 -> positions 5 then 2
    bits = [(v >> j) & 1 for v in lows for j in range(low_bits)]
    upper = [1, 1] + [0] * (P.elias_fano_bits(numel, 2, low_bits) - 2 * low_bits - 2)
    data = np.packbits(np.array(bits + upper, dtype=np.uint8), bitorder="little").tobytes()

    # Execute / Assert
    with pytest.raises(ValueError, match="strictly increasing"):
        P.decode_elias_fano(data, numel, 2, low_bits)


def test_rice_rejects_positions_beyond_the_tensor() -> None:
    # Prepare: a valid stream for positions in a larger tensor, decoded as a smaller one.
    enc = P.encode_rice(np.array([3, 900], dtype=np.int64), 1000, param=2)

    # Execute / Assert
    with pytest.raises(ValueError, match="out of range"):
        P.decode_rice(enc.data, 100, 2, 2)


def test_bitmap_count_must_match_values() -> None:
    enc = P.encode_bitmap(np.array([1, 5], dtype=np.int64), 16)
    with pytest.raises(ValueError, match="marks 2 positions"):
        P.decode_bitmap(enc.data, 16, 3)


def test_nonzero_padding_is_rejected() -> None:
    enc = P.encode_bitmap(np.array([1], dtype=np.int64), 5)
    tampered = bytes([enc.data[0] | 0x80])
    with pytest.raises(ValueError, match="padding"):
        P.decode_bitmap(tampered, 5, 1)


def test_encoders_refuse_invalid_position_lists() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        F.encode_smallest(np.array([3, 3]), 10)
    with pytest.raises(ValueError, match="out of range"):
        F.encode_smallest(np.array([3, 10]), 10)


def _peak_bytes(fn: Any) -> int:
    """Peak memory traced while ``fn`` runs (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ValueError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("code", "param"), [("rice", 31), ("elias-fano", 31), ("rice", 23)])
def test_a_crafted_position_code_costs_no_more_than_its_stream(code: str, param: int) -> None:
    # Prepare: 2^17 positions of a 2^22-element tensor with the widest parameter the code
    # admits, and a stream of zeros as long as that parameter needs (half a megabyte)
    numel, nnz = 1 << 22, 1 << 17
    data = bytes((nnz * (param + 1) + 8) // 8)
    params = {"param": param, "low_bits": param}

    # Execute
    peak = _peak_bytes(lambda: P.decode_positions(code, params, data, numel, nnz))

    # Assert: refused (param above log2 of the tensor, or no positions marked) within a few
    # MB; the decoder once unpacked the whole stream and widened its bits to int64 (37 MB)
    with pytest.raises(ValueError):
        P.decode_positions(code, params, data, numel, nnz)
    assert peak < len(data) + 4 * 2**20, peak


def test_parameters_are_bounded_by_the_tensor_size() -> None:
    assert P.max_param(1) == 1 and P.max_param(1000) == 10 and P.max_param(1 << 31) == 31
    idx = random_positions(1 << 12, 1, seed=0)
    for fn in (P.encode_elias_fano, P.encode_rice):
        enc = fn(idx, 1 << 12)
        assert max(enc.params.values()) <= P.max_param(1 << 12)
    with pytest.raises(ValueError, match="outside"):
        P.decode_rice(b"\x00", 100, 1, 8)
