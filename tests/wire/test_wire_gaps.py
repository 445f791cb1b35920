"""The zstd-gaps position code: batches, structure it exploits, and hostile streams."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from fedlora.wire import framing as F
from fedlora.wire import positions as P


def random_positions(numel: int, nnz: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(numel, size=nnz, replace=False)).astype(np.int64)


def frame(content: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(content)


def decode(data: bytes, numel: int, nnz: int) -> np.ndarray:
    return P.decode_positions("zstd-gaps", {}, data, numel, nnz)


def test_a_batch_encodes_and_decodes_each_list_as_alone() -> None:
    # Prepare: lists of every kind in one batch: empty, one position, gaps above 255
    # (escapes), a run, random ones.
    lists = [
        (np.zeros(0, dtype=np.int64), 10),
        (np.array([9], dtype=np.int64), 10),
        (np.array([0, 300, 70_000, 70_001], dtype=np.int64), 1 << 20),
        (np.arange(100, 400, dtype=np.int64), 1000),
        (random_positions(50_000, 2_000, seed=1), 50_000),
    ]

    # Execute
    batch = F.encode_smallest_many(lists)
    decoded = P.decode_many(
        [(e.encoding, e.params, e.data, n, i.size) for e, (i, n) in zip(batch, lists, strict=True)]
    )

    # Assert: the batch chose what one list alone chooses, and decodes exactly
    for enc, (idx, numel), back in zip(batch, lists, decoded, strict=True):
        assert enc == F.encode_smallest(idx, numel)
        np.testing.assert_array_equal(back, idx)
    assert P.encode_zstd_gaps(lists[2][0], 1 << 20).data  # escapes round trip on their own too
    np.testing.assert_array_equal(
        decode(P.encode_zstd_gaps(lists[2][0], 1 << 20).data, 1 << 20, 4), lists[2][0]
    )


def reference_content(lists: list[np.ndarray]) -> bytes:
    """The module docstring's frame content, gap by gap in plain Python."""
    gap_bytes, escapes = bytearray(), bytearray()
    for idx in lists:
        before = -1
        for x in idx.tolist():
            gap = x - before - 1
            gap_bytes.append(min(gap, 255))
            if gap >= 255:
                escapes += gap.to_bytes(4, "little")
            before = x
    return bytes(gap_bytes + escapes)


def test_a_frames_content_is_the_gap_bytes_then_the_escapes_as_documented() -> None:
    # Lists with gaps just below, at and above the escape, empty lists, and long ones.
    from fedlora.wire import gaps as G

    rng = np.random.default_rng(3)
    lists = [
        np.array([254, 255, 511, 767, 768], dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        random_positions(1 << 20, 3_000, seed=4),
        np.array([0, 1, 2, 100_000], dtype=np.int64),
        np.sort(rng.choice(5_000, size=4_000, replace=False)).astype(np.int64),
    ]
    gaps = G.batch(lists)
    order = list(range(len(lists)))
    assert G.frame_content(gaps, order) == reference_content(lists)
    # and each list decodes from a frame of its own
    for idx, frame in zip(lists, G.encode_many(lists), strict=True):
        if idx.size:
            np.testing.assert_array_equal(decode(frame, 1 << 20, idx.size), idx)


def test_a_list_that_falls_back_after_an_escape_is_refused() -> None:
    from fedlora.wire import gaps as G

    for bad in (np.array([0, 70_000, 3]), np.array([300, 300]), np.array([10, 2_000, 5, 9])):
        with pytest.raises(G.StreamError, match="not strictly increasing") as caught:
            G.batch([np.array([1, 2]), bad.astype(np.int64)])
        assert caught.value.index == 1


def test_a_structured_mask_costs_fewer_bytes_in_zstd_gaps_than_in_rice() -> None:
    # Prepare: a 256x1024 mask that keeps 4% of the entries, drawn within the 32 rows an
    # importance score favours (as the sparsifiers' masks concentrate on rows).
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(256, size=32, replace=False))
    mask = np.zeros((256, 1024), dtype=bool)
    mask[rows] = rng.random((32, 1024)) < 0.32
    idx, numel = np.flatnonzero(mask).astype(np.int64), mask.size

    # Execute
    rice = P.encode_rice(idx, numel)
    chosen = F.encode_smallest(idx, numel)

    # Assert
    assert chosen.encoding == "zstd-gaps"
    assert len(chosen.data) < 0.9 * len(rice.data)


def test_uniformly_random_positions_keep_a_rice_or_elias_fano_code_when_smaller() -> None:
    idx = random_positions(1 << 16, 1 << 9, seed=2)
    chosen = F.encode_smallest(idx, 1 << 16)
    sizes = {
        n: len(f(idx, 1 << 16).data)
        for n, f in [("rice", P.encode_rice), ("zstd-gaps", P.encode_zstd_gaps)]
    }
    assert len(chosen.data) == min(min(sizes.values()), len(P.encode_elias_fano(idx, 1 << 16).data))


@pytest.mark.parametrize(
    ("data", "numel", "nnz", "problem"),
    [
        (b"not a frame at all", 100, 3, "not a Zstandard frame"),
        (frame(bytes([1, 2, 3]), content_size=False), 100, 3, "content size"),
        (frame(bytes(16)), 100, 3, "declares 16 bytes"),
        (frame(bytes([1, 2, 3])) + b"\x00", 100, 3, "does not decompress"),
        (frame(bytes([1, 2])), 100, 3, "declares 2 bytes"),
        (frame(bytes([1, 2, 3, 0])), 100, 3, "content is 4 bytes"),
        (frame(bytes([1, 255, 3]) + (10).to_bytes(4, "little")), 100, 3, "below 255"),
        (frame(bytes([1, 255, 3]) + (300).to_bytes(4, "little")), 100, 3, "out of range"),
        (frame(bytes([50, 50, 50])), 100, 3, "out of range"),
        (frame(bytes([1])), 100, 0, "must be empty"),
    ],
)
def test_a_hostile_stream_is_refused_naming_the_problem(
    data: bytes, numel: int, nnz: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        decode(data, numel, nnz)


def test_a_frame_declaring_more_than_five_bytes_a_position_is_refused_before_decompressing() -> (
    None
):
    # A 2 MB frame of zeros compresses to a few hundred bytes: it must not be inflated for 3
    # positions.
    bomb = frame(bytes(2_000_000))
    assert len(bomb) < 1000
    with pytest.raises(ValueError, match="declares 2000000 bytes"):
        decode(bomb, 1 << 30, 3)


def test_a_batch_checks_each_list_on_its_own() -> None:
    # Lists may start below where the one before ended, and empty lists sit anywhere.
    ok = [(np.array([5, 9]), 10), (np.zeros(0, dtype=np.int64), 3), (np.array([0, 1]), 2)]
    assert [e.encoding for e in F.encode_smallest_many(ok)]
    for bad, index, problem in [
        (
            [(np.array([5, 9]), 10), (np.zeros(0, dtype=np.int64), 3), (np.array([1, 1]), 4)],
            2,
            "increasing",
        ),
        ([(np.array([5, 9]), 10), (np.array([0, 4]), 4)], 1, "out of range"),
        ([(np.array([-1, 2]), 10), (np.array([0, 4]), 5)], 0, "out of range"),
    ]:
        with pytest.raises(P.PositionError, match=problem) as caught:
            F.encode_smallest_many(bad)
        assert caught.value.index == index


def test_a_bad_stream_in_a_batch_is_named_by_its_index() -> None:
    good = P.encode_zstd_gaps(np.array([1, 5], dtype=np.int64), 10)
    streams = [
        ("zstd-gaps", {}, good.data, 10, 2),
        ("rice", {"param": 1}, P.encode_rice(np.array([2], dtype=np.int64), 10, 1).data, 10, 1),
        ("zstd-gaps", {}, good.data, 4, 2),
    ]
    with pytest.raises(P.PositionError, match="out of range") as caught:
        P.decode_many(streams)
    assert caught.value.index == 2
    with pytest.raises(P.PositionError, match="no parameters"):
        P.decode_many([("zstd-gaps", {"param": 1}, good.data, 10, 2)])
