"""Seeded inits and empty entries on the wire: a fresh LoRA A travels as its init rule and
seed and is rebuilt bit-identically by the receiver, B = 0 travels with no streams, and
hostile descriptions are refused naming the tensor."""

from __future__ import annotations

import pytest
import torch

from fedlora.errors import PayloadError
from fedlora.ops.seeded_init import LORA_A_RULE, SeededInit, portable_uniform
from fedlora.ops.sparse import Sparse
from fedlora.wire import container as ct
from fedlora.wire import decode, decode_with_stats, encode, encode_with_stats


def test_seeded_init_round_trips_and_rebuilds_the_same_tensor() -> None:
    # Prepare: a rank-8 A of a 576-wide layer (SmolLM2's hidden size)
    init = SeededInit((8, 576), seed=12345)
    # Execute
    buf, stats = encode_with_stats({"l0.A": init})
    payload, rx = decode_with_stats(buf, expected={"l0.A": (8, 576)})
    # Assert: the same description comes back, its tensor is PEFT's bound, rebuilt exactly
    (entry,) = payload.values()
    assert entry == init
    expected = portable_uniform(12345, (8, 576), -(576**-0.5), 576**-0.5)
    assert torch.equal(entry.to_dense(), expected)
    assert float(expected.abs().max()) <= 576**-0.5
    # ... and no values crossed: the whole buffer is a small header
    assert stats.values == 0 and stats.value_bytes == 0 and rx.total_bytes == len(buf)
    assert len(buf) < 300 < 8 * 576 * 4
    assert stats.encodings() == {"A": {"seed-init": 1}}


def test_a_prefix_of_rows_is_the_lower_rank_init_of_the_same_seed() -> None:
    assert torch.equal(SeededInit((3, 32), 7).to_dense(), SeededInit((8, 32), 7).to_dense()[:3])


def craft(desc: dict[str, object]) -> bytes:
    return ct.write({}, {"l0.A": desc})


@pytest.mark.parametrize(
    ("desc", "problem"),
    [
        ({"rule": "xavier", "seed": 1}, "unknown init rule"),
        ({"rule": LORA_A_RULE, "seed": -1}, "init seed"),
        ({"rule": LORA_A_RULE, "seed": 2**63}, "init seed"),
        ({"rule": LORA_A_RULE, "seed": 1.5}, "init seed"),
        ({"rule": LORA_A_RULE, "seed": 1, "shape": [4, 0]}, "2-D"),
        ({"rule": LORA_A_RULE, "seed": 1, "shape": [4, 8, 2]}, "2-D"),
    ],
)
def test_hostile_seeded_descriptions_are_refused(desc: dict[str, object], problem: str) -> None:
    full = {"kind": "seeded", "shape": [4, 8], "dtype": "float32", **desc}
    with pytest.raises(PayloadError, match=f"tensor 'l0.A': .*{problem}"):
        decode(craft(full))


def test_seeded_entry_counts_towards_the_element_limit() -> None:
    buf = encode({"l0.A": SeededInit((1000, 1000), 3)})
    with pytest.raises(PayloadError, match="limit"):
        decode(buf, max_elements=10**5)


def test_seeded_entry_must_match_the_expected_shape() -> None:
    buf = encode({"l0.A": SeededInit((4, 8), 3)})
    with pytest.raises(PayloadError, match="does not match the expected"):
        decode(buf, expected={"l0.A": (4, 9)})


def test_an_all_zero_sparse_entry_travels_with_no_streams() -> None:
    # Prepare: B = 0 of a fresh adapter
    zero = Sparse((576, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    # Execute
    buf, stats = encode_with_stats({"l0.B": zero})
    payload = decode(buf, expected={"l0.B": (576, 8)})
    # Assert: decoded as the zero tensor; only a header crossed
    assert torch.equal(payload["l0.B"].to_dense(), torch.zeros(576, 8))
    assert stats.encodings() == {"B": {"empty": 1}} and stats.value_bytes == 0
    assert len(buf) < 300  # the container's JSON header alone


def test_an_empty_entry_that_declares_values_is_refused() -> None:
    desc = {
        "kind": "sparse",
        "shape": [4, 8],
        "dtype": "float32",
        "nnz": 3,
        "positions": {"encoding": "empty"},
    }
    with pytest.raises(PayloadError, match="tensor 'l0.A': an empty sparse entry declares 3"):
        decode(craft(desc))
