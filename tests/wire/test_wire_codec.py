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
    buf = craft(
        {"t.B": sparse_description([6, 10], 5, {"encoding": code, **enc.params})},
        {ct.values_key("t.B"): values, ct.positions_key("t.B"): stream(enc.data)},
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
        {ct.values_key("u.B"): torch.ones(2), ct.positions_key("u.B"): stream(data)},
    )
    assert_rejected(buf, "u.B", "strictly increasing")


def test_out_of_range_positions_are_rejected() -> None:
    enc = P.encode_rice(np.array([1, 90]), 100, param=3)
    buf = craft(
        {"o.B": sparse_description([50], 2, {"encoding": "rice", "param": 3})},
        {ct.values_key("o.B"): torch.ones(2), ct.positions_key("o.B"): stream(enc.data)},
    )
    assert_rejected(buf, "o.B", "out of range")


def test_positions_count_must_equal_values_count() -> None:
    enc = P.encode_bitmap(np.array([1, 2, 3]), 8)
    buf = craft(
        {"c.B": sparse_description([8], 2, {"encoding": "bitmap"})},
        {ct.values_key("c.B"): torch.ones(2), ct.positions_key("c.B"): stream(enc.data)},
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
        {ct.values_key("s.B"): torch.ones(true_count + 1)},
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
    import fedlora.wire.codec as codec

    def forbidden(*args: object) -> None:
        raise AssertionError("mask regeneration was attempted")

    monkeypatch.setattr(codec, "seeded_keep_mask", forbidden)
    buf = craft(
        {
            "h.B": sparse_description(
                [1 << 20, 1 << 20], 1, {"encoding": "seed", "seed": 1, "keep_prob": 0.5}
            )
        },
        {ct.values_key("h.B"): torch.ones(1)},
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
