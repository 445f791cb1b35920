"""Payload round trips, byte accounting and strict decoding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from fedlora.errors import PayloadError
from fedlora.ops.sparse import Sparse
from fedlora.wire import container as ct
from fedlora.wire import decode, decode_with_stats, describe, encode, encode_with_stats
from fedlora.wire import positions as P


def small_payload() -> dict[str, torch.Tensor | Sparse]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(4, 16, generator=gen)
    big = torch.randn(16, 4, generator=gen)
    return {
        "l0.A": dense,
        "l0.B": Sparse.from_mask(big, torch.rand(16, 4, generator=gen) < 0.3),
        "l1.B": Sparse.from_seeded_mask(torch.randn(8, 4, generator=gen), seed=9, keep_prob=0.5),
    }


def shapes_of(payload: dict[str, torch.Tensor | Sparse]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(v.shape) for n, v in payload.items()}


def craft(description: dict[str, object], tensors: dict[str, torch.Tensor]) -> bytes:
    """A container written by hand, to feed the decoder what no honest encoder writes."""
    return ct.write(tensors, description)


def sparse_description(
    shape: list[int], nnz: int, positions: dict[str, object]
) -> dict[str, object]:
    return {
        "kind": "sparse",
        "shape": shape,
        "dtype": "float32",
        "nnz": nnz,
        "positions": positions,
    }


def stream(data: bytes) -> torch.Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# --------------------------------------------------------------------------- round trips


def test_dense_float32_round_trip_is_exact() -> None:
    # Prepare
    payload = {"x.A": torch.randn(3, 5, dtype=torch.float64), "x.B": torch.randn(5, 3)}

    # Execute
    out = decode(encode(payload), expected=shapes_of(payload))

    # Assert
    assert set(out) == set(payload)
    for name, value in payload.items():
        assert out[name].dtype == torch.float32
        assert torch.equal(out[name], value.to(torch.float32))


@pytest.mark.parametrize(("dtype", "bits"), [("bfloat16", 8), ("float16", 11)])
def test_half_precision_values_travel_in_half_the_bytes(dtype: str, bits: int) -> None:
    # Prepare
    value = torch.randn(64, 8)

    # Execute
    buf32, stats32 = encode_with_stats({"w.B": value})
    buf16, stats16 = encode_with_stats({"w.B": value}, value_dtype=dtype)
    out = decode(buf16)["w.B"]

    # Assert: the dtype is recorded, values decode to float32 within the format's precision.
    assert stats16.value_dtypes == (dtype,)
    assert stats16.value_bytes * 2 == stats32.value_bytes
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, value, rtol=2.0**-bits, atol=1e-6)


@pytest.mark.parametrize("code", P.ENCODINGS)
def test_sparse_round_trip_with_each_position_code(code: str) -> None:
    # Prepare: positions written with one specific code.
    numel, idx = 60, np.array([0, 7, 8, 30, 59], dtype=np.int64)
    values = torch.tensor([1.0, -2.0, 3.5, 0.25, -7.0])
    encoders = {
        "bitmap": P.encode_bitmap,
        "elias-fano": P.encode_elias_fano,
        "rice": P.encode_rice,
        "zstd-gaps": P.encode_zstd_gaps,
    }
    enc = encoders[code](idx, numel)
    where, key = {"encoding": code, **enc.params}, ct.positions_key("t.B")
    if code == "zstd-gaps":  # a frame of one list, shared with nobody
        where, key = {"encoding": code, "frame": 0}, ct.frame_key(0)
    buf = craft(
        {"t.B": sparse_description([6, 10], 5, where)},
        {ct.VALUES_KEY: values, key: stream(enc.data)},
    )

    # Execute
    out, stats = decode_with_stats(buf, expected={"t.B": (6, 10)})

    # Assert
    entry = out["t.B"]
    assert isinstance(entry, Sparse)
    assert entry.shape == (6, 10)
    np.testing.assert_array_equal(entry.indices.numpy(), idx)
    assert torch.equal(entry.values, values)
    assert stats.tensors[0].encoding == code


def test_mixed_payload_round_trips_and_encoder_and_decoder_agree_on_stats() -> None:
    # Prepare
    payload = small_payload()

    # Execute
    buf, sent = encode_with_stats(payload)
    out, received = decode_with_stats(buf, expected=shapes_of(payload))

    # Assert
    assert sent == received == describe(buf)
    assert sent.total_bytes == len(buf)
    for name, value in payload.items():
        if isinstance(value, Sparse):
            assert torch.equal(out[name].indices, value.indices)
            assert torch.equal(out[name].values, value.values)
        else:
            assert torch.equal(out[name], value)
    seeded = out["l1.B"]
    assert (seeded.mask_seed, seeded.keep_prob) == (9, 0.5)
    assert received.tensors[2].encoding == "seed" and received.tensors[2].position_bytes == 0


def test_stats_count_values_nonzeros_and_bytes() -> None:
    # Prepare: a dense tensor with two zeros and a sparse one with 3 values.
    dense = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    sparse = Sparse((10,), torch.tensor([1, 4, 9]), torch.tensor([1.0, 0.0, 3.0]))

    # Execute
    buf, stats = encode_with_stats({"a.A": dense, "a.B": sparse})

    # Assert
    assert stats.values == 4 + 3
    assert stats.nonzero == 2 + 2
    assert stats.value_bytes == 4 * 7
    assert stats.overhead_bytes == len(buf) - 28 - stats.position_bytes
    assert stats.encodings()["A"] == {"dense": 1}
    assert json.loads(json.dumps(stats.as_dict()))["bytes"] == len(buf)


def test_dense_payload_bytes_are_values_plus_small_header() -> None:
    payload = {f"layer{i}.A": torch.randn(8, 32) for i in range(5)}
    buf = encode(payload)
    assert 5 * 8 * 32 * 4 < len(buf) < 5 * 8 * 32 * 4 + 200 * 5


def test_one_tensor_under_two_names_round_trips() -> None:
    shared = torch.randn(3, 2)
    out = decode(encode({"x.A": shared, "y.A": shared, "z.A": shared[1:]}))
    assert torch.equal(out["x.A"], shared) and torch.equal(out["y.A"], shared)
    assert torch.equal(out["z.A"], shared[1:])


def test_sparse_entries_without_values_round_trip() -> None:
    # Prepare: an all-zero factor (B^0 = 0) and an empty seeded mask.
    empty = Sparse((6, 3), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    seeded = Sparse.from_seeded_mask(torch.ones(5), seed=1, keep_prob=0.0)

    # Execute
    out, stats = decode_with_stats(encode({"e.B": empty, "s.B": seeded}))

    # Assert
    assert out["e.B"].nnz == 0 and out["e.B"].shape == (6, 3)
    assert torch.equal(out["e.B"].to_dense(), torch.zeros(6, 3))
    assert out["s.B"].nnz == 0 and out["s.B"].mask_seed == 1
    assert stats.values == 0


def test_empty_payload_round_trips() -> None:
    assert decode(encode({})) == {}


def test_encoder_refuses_seed_that_does_not_match_positions() -> None:
    good = Sparse.from_seeded_mask(torch.randn(40), seed=3, keep_prob=0.5)
    bad = Sparse(good.shape, good.indices, good.values, mask_seed=4, keep_prob=0.5)
    with pytest.raises(ValueError, match="seeded mask"):
        encode({"x.B": bad})


def test_encoder_refuses_reserved_names_and_integer_tensors() -> None:
    with pytest.raises(ValueError, match="::"):
        encode({"a::values": torch.zeros(2)})
    with pytest.raises(ValueError, match="floating point"):
        encode({"a": torch.zeros(2, dtype=torch.int64)})


# --------------------------------------------------------------------------- strict decoding


def assert_rejected(buf: bytes, name: str, problem: str, **kwargs: object) -> None:
    with pytest.raises(PayloadError) as info:
        decode(buf, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert name in message, message
    assert problem in message, message


def test_every_truncation_of_a_small_payload_is_rejected() -> None:
    # Prepare
    buf = encode(small_payload())

    for cut in range(len(buf)):
        # Execute / Assert
        with pytest.raises(PayloadError):
            decode(buf[:cut])


def test_truncated_tensor_data_names_the_tensor() -> None:
    buf = encode({"only.A": torch.ones(4, 4)})
    assert_rejected(buf[:-3], "only.A", "truncated")


def test_missing_unexpected_and_misshapen_tensors_are_named() -> None:
    payload = small_payload()
    buf = encode(payload)
    expected = shapes_of(payload)

    missing = dict(expected, **{"l2.A": (4, 16)})
    assert_rejected(buf, "l2.A", "missing", expected=missing)

    fewer = {n: s for n, s in expected.items() if n != "l0.A"}
    assert_rejected(buf, "l0.A", "not a tensor the receiver expects", expected=fewer)

    wrong = dict(expected, **{"l0.B": (4, 16)})
    assert_rejected(buf, "l0.B", "does not match the expected", expected=wrong)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected_naming_the_tensor(bad: float) -> None:
    dense = torch.ones(3, 3)
    dense[1, 2] = bad
    sparse = Sparse((9,), torch.tensor([2, 5]), torch.tensor([1.0, bad]))

    assert_rejected(encode({"d.A": dense}), "d.A", "non-finite")
    assert_rejected(encode({"s.B": sparse}), "s.B", "non-finite")
    assert_rejected(encode({"h.B": dense}, value_dtype="float16"), "h.B", "non-finite")


def test_wrong_stored_dtype_is_rejected() -> None:
    # Prepare: header says float32, data is float16.
    buf = craft(
        {"w.A": {"kind": "dense", "shape": [2, 2], "dtype": "float32"}},
        {"w.A": torch.zeros(2, 2, dtype=torch.float16)},
    )
    assert_rejected(buf, "w.A", "stored dtype")


def test_unsupported_declared_dtype_is_rejected() -> None:
    buf = craft({"w.A": {"kind": "dense", "shape": [2], "dtype": "int8"}}, {"w.A": torch.zeros(2)})
    assert_rejected(buf, "w.A", "dtype 'int8'")


def test_unsorted_positions_are_rejected() -> None:
    # Prepare: an Elias-Fano stream whose second position is below the first.
    low_bits = 3
    bits = [(v >> j) & 1 for v in (5, 2) for j in range(low_bits)]
    bits += [1, 1] + [0] * (P.elias_fano_bits(64, 2, low_bits) - len(bits) - 2)
    data = np.packbits(np.array(bits, dtype=np.uint8), bitorder="little").tobytes()
    buf = craft(
        {"u.B": sparse_description([64], 2, {"encoding": "elias-fano", "low_bits": low_bits})},
        {ct.VALUES_KEY: torch.ones(2), ct.positions_key("u.B"): stream(data)},
    )
    assert_rejected(buf, "u.B", "strictly increasing")


def test_out_of_range_positions_are_rejected() -> None:
    enc = P.encode_rice(np.array([1, 90]), 100, param=3)
    buf = craft(
        {"o.B": sparse_description([50], 2, {"encoding": "rice", "param": 3})},
        {ct.VALUES_KEY: torch.ones(2), ct.positions_key("o.B"): stream(enc.data)},
    )
    assert_rejected(buf, "o.B", "out of range")


def test_positions_count_must_equal_values_count() -> None:
    enc = P.encode_bitmap(np.array([1, 2, 3]), 8)
    buf = craft(
        {"c.B": sparse_description([8], 2, {"encoding": "bitmap"})},
        {ct.VALUES_KEY: torch.ones(2), ct.positions_key("c.B"): stream(enc.data)},
    )
    assert_rejected(buf, "c.B", "marks more than 2 positions")


def test_seeded_mask_count_must_equal_values_count() -> None:
    true_count = int(Sparse.from_seeded_mask(torch.ones(100), 5, 0.5).nnz)
    buf = craft(
        {
            "s.B": sparse_description(
                [100], true_count + 1, {"encoding": "seed", "seed": 5, "keep_prob": 0.5}
            )
        },
        {ct.VALUES_KEY: torch.ones(true_count + 1)},
    )
    assert_rejected(buf, "s.B", "seeded mask keeps")


def test_size_limits_are_enforced() -> None:
    buf = encode(small_payload())
    assert_rejected(buf, "payload", "above the limit", max_bytes=len(buf) - 1)
    assert decode(buf, max_bytes=len(buf))
    assert_rejected(buf, "payload size exceeds", "elements", max_elements=64 + 64)


def test_huge_declared_seeded_tensor_is_refused_before_regeneration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a few bytes claiming a 2^40-element tensor; regeneration must never start.
    import fedlora.wire.received as received

    def forbidden(*args: object) -> None:
        raise AssertionError("mask regeneration was attempted")

    monkeypatch.setattr(received, "seeded_keep_mask", forbidden)
    buf = craft(
        {
            "h.B": sparse_description(
                [1 << 20, 1 << 20], 1, {"encoding": "seed", "seed": 1, "keep_prob": 0.5}
            )
        },
        {ct.VALUES_KEY: torch.ones(1)},
    )

    # Execute / Assert
    assert_rejected(buf, "h.B", "2^31")


def test_header_length_beyond_buffer_is_rejected() -> None:
    buf = encode({"a.A": torch.ones(2)})
    hostile = struct.pack("<Q", 1 << 40) + buf[8:]
    assert_rejected(hostile, "payload", "header declares")


def test_deeply_nested_header_is_rejected_not_crashing() -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    assert_rejected(struct.pack("<Q", len(text)) + text, "payload", "not valid JSON")


def test_stored_tensor_not_in_description_is_rejected() -> None:
    buf = craft(
        {"a.A": {"kind": "dense", "shape": [2], "dtype": "float32"}},
        {"a.A": torch.zeros(2), "stowaway": torch.zeros(3)},
    )
    assert_rejected(buf, "stowaway", "not described")


def test_foreign_safetensors_file_is_rejected() -> None:
    from safetensors.torch import save

    assert_rejected(save({"w": torch.zeros(2)}), "payload", "__metadata__")


def test_a_nearly_full_sparse_entry_travels_dense_and_decodes_to_the_same_values() -> None:
    # Prepare: 1023 of 1024 entries present, so any position code costs more than it saves
    values = torch.arange(1, 1025, dtype=torch.float32).reshape(32, 32)
    values[3, 7] = 0.0
    sparse = Sparse.from_mask(values, values != 0)
    # Execute
    data, stats = encode_with_stats({"x": sparse})
    back = decode(data, expected=None)["x"]
    # Assert: sent as a dense block (no position bytes), the same tensor comes back
    assert stats.encodings() == {"x": {"dense": 1}}
    assert len(data) < 1024 * 4 + 512
    assert isinstance(back, torch.Tensor) and torch.equal(back, values)


# --------------------------------------------------------------------------- shared frames


def row_mask(rows: int, cols: int, seed: int, density: float = 0.3) -> torch.Tensor:
    """A mask concentrated on a quarter of the rows, as the sparsifiers' masks are."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    chosen = torch.randperm(rows, generator=gen)[: rows // 4]
    mask[chosen] = torch.rand(rows // 4, cols, generator=gen) < density
    return mask


def framed_payload(scale: int = 1) -> dict[str, Sparse]:
    gen = torch.Generator().manual_seed(1)
    out = {}
    for layer in range(3):
        for name, shape in (("A", (32 * scale, 64 * scale)), ("B", (64 * scale, 32 * scale))):
            dense = torch.randn(*shape, generator=gen)
            out[f"l{layer}.{name}"] = Sparse.from_mask(
                dense, row_mask(*shape, 10 * layer + len(name))
            )
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_entries_of_one_shape_share_a_frame_and_round_trip(dtype: str) -> None:
    # Prepare: three A and three B factors, every mask sparse and row-structured.
    payload = framed_payload()

    # Execute
    buf, sent = encode_with_stats(payload, value_dtype=dtype)
    out, received = decode_with_stats(buf, expected=shapes_of(payload))
    header = ct.read_header(buf)

    # Assert: one frame per shape, every entry in its shape's frame, exact positions, and the
    # frames' bytes charged to their entries in full.
    frames = {key for key in header.stored if key.startswith("::frame::")}
    assert frames == {ct.frame_key(0), ct.frame_key(1)}
    where = {name: d["positions"] for name, d in header.description.items()}
    assert {w["encoding"] for w in where.values()} == {"zstd-gaps"}
    assert len({w["frame"] for n, w in where.items() if n.endswith(".A")}) == 1
    assert where["l0.A"]["frame"] != where["l0.B"]["frame"]
    for name, entry in payload.items():
        assert torch.equal(out[name].indices, entry.indices)
        assert torch.equal(out[name].values, entry.values.to(getattr(torch, dtype)).float())
    frame_bytes = sum(header.stored[key].end - header.stored[key].start for key in frames)
    assert sent == received
    assert sent.position_bytes == frame_bytes


def test_a_dense_mask_leaves_its_frame_for_a_bitmap() -> None:
    # Prepare: two tensors of one shape: half of one is present at random (a bitmap is the
    # smallest code for it), the other is sparse and structured.
    gen = torch.Generator().manual_seed(2)
    half = torch.rand(64, 64, generator=gen) < 0.5
    payload = {
        "h.B": Sparse.from_mask(torch.randn(64, 64, generator=gen), half),
        "s.B": Sparse.from_mask(torch.randn(64, 64, generator=gen), row_mask(64, 64, 3)),
    }

    # Execute
    buf, stats = encode_with_stats(payload)
    out = decode(buf)

    # Assert
    assert {t.name: t.encoding for t in stats.tensors} == {"h.B": "bitmap", "s.B": "zstd-gaps"}
    assert stats.tensors[0].position_bytes == 64 * 64 // 8
    for name, entry in payload.items():
        assert torch.equal(out[name].indices, entry.indices)


def test_a_large_group_is_cut_into_frames_that_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedlora.wire import framing

    payload = framed_payload(scale=8)  # about 9800 positions a tensor
    monkeypatch.setattr(framing, "FRAME_POSITIONS", 15_000)
    buf, stats = encode_with_stats(payload)
    assert {t.encoding for t in stats.tensors} == {"zstd-gaps"}
    assert len([k for k in ct.read_header(buf).stored if k.startswith("::frame::")]) == 6
    for name, entry in decode(buf).items():
        assert torch.equal(entry.indices, payload[name].indices)


def test_an_older_format_version_is_refused() -> None:
    buf = encode({"a.A": torch.ones(2)})
    (size,) = struct.unpack("<Q", buf[:8])
    head = json.loads(buf[8 : 8 + size])
    meta = json.loads(head["__metadata__"]["fedlora"])
    meta["version"] = 1
    head["__metadata__"]["fedlora"] = json.dumps(meta)
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    assert_rejected(struct.pack("<Q", len(text)) + text + buf[8 + size :], "payload", "version 1")


def frame_of(lists: list[np.ndarray]) -> torch.Tensor:
    """One zstd-gaps frame holding ``lists`` end to end, as an honest sender writes it."""
    from fedlora.wire import gaps as G

    gaps = G.batch(lists)
    return stream(G.frames(gaps, [list(range(len(lists)))])[0])


def framed(entries: dict[str, tuple[int, int]], frame: torch.Tensor, values: int) -> bytes:
    """Entries name -> (numel, nnz), all in frame 0, with ``values`` shared values."""
    description = {
        name: sparse_description([numel], nnz, {"encoding": "zstd-gaps", "frame": 0})
        for name, (numel, nnz) in entries.items()
    }
    return craft(description, {ct.VALUES_KEY: torch.ones(values), ct.frame_key(0): frame})


def test_a_list_of_a_shared_frame_that_leaves_its_tensor_is_named() -> None:
    # The frame is honest for tensors of 100 elements; the second entry claims only 40.
    frame = frame_of([np.array([1, 5, 9]), np.array([2, 50])])
    assert decode(framed({"a.B": (100, 3), "b.B": (100, 2)}, frame, 5))
    assert_rejected(framed({"a.B": (100, 3), "b.B": (40, 2)}, frame, 5), "b.B", "out of range")


def test_a_bad_shared_frame_names_its_first_tensor_and_the_frame() -> None:
    frame = frame_of([np.array([1, 5, 9]), np.array([2, 50])])
    assert_rejected(
        framed({"a.B": (100, 3), "b.B": (100, 3)}, frame, 6), "a.B", "zstd-gaps frame 0"
    )
    garbage = stream(b"not a zstandard frame")
    assert_rejected(framed({"a.B": (100, 3), "b.B": (100, 2)}, garbage, 5), "a.B", "frame 0")


@pytest.mark.parametrize(
    ("positions", "nnz", "stored", "problem"),
    [
        ({"encoding": "zstd-gaps", "frame": 3}, 2, "frame0", "frame 3 is not an index"),
        ({"encoding": "zstd-gaps", "frame": 0}, 2, "no-frame", "'::frame::0' missing"),
        ({"encoding": "zstd-gaps", "frame": -1}, 2, "frame0", "frame -1"),
        ({"encoding": "zstd-gaps", "frame": "0"}, 2, "frame0", "frame '0'"),
        ({"encoding": "zstd-gaps"}, 2, "frame0", "frame None"),
        ({"encoding": "zstd-gaps", "frame": 0}, 0, "frame0", "no positions"),
        ({"encoding": "zstd-gaps", "frame": 0}, 2, "values3", "does not match [2]"),
        ({"encoding": "zstd-gaps", "frame": 0}, 2, "no-values", "'::values' is missing"),
        ({"encoding": "zstd-gaps", "frame": 0}, 2, "extra-frame", "not described"),
    ],
)
def test_a_malformed_shared_layout_is_refused_naming_the_entry(
    positions: dict[str, object], nnz: int, stored: str, problem: str
) -> None:
    frame = frame_of([np.array([1, 5])])
    tensors = {ct.VALUES_KEY: torch.ones(2), ct.frame_key(0): frame}
    if stored == "values3":
        tensors[ct.VALUES_KEY] = torch.ones(3)
    elif stored == "no-values":
        del tensors[ct.VALUES_KEY]
    elif stored == "extra-frame":
        tensors[ct.frame_key(1)] = frame
    elif stored == "no-frame":
        del tensors[ct.frame_key(0)]
    buf = craft({"f.B": sparse_description([10], nnz, positions)}, tensors)
    name = "::frame::1" if stored == "extra-frame" else "f.B"
    assert_rejected(buf, name, problem)


def test_sparse_entries_declaring_two_value_dtypes_are_refused() -> None:
    frame = frame_of([np.array([1, 5]), np.array([2])])
    description = {
        "a.B": sparse_description([10], 2, {"encoding": "zstd-gaps", "frame": 0}),
        "b.B": dict(
            sparse_description([10], 1, {"encoding": "zstd-gaps", "frame": 0}), dtype="float16"
        ),
    }
    buf = craft(description, {ct.VALUES_KEY: torch.ones(3), ct.frame_key(0): frame})
    assert_rejected(buf, "a.B", "not one")
