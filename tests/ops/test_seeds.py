"""Named seed streams: stable, distinct, 63-bit, and the stream numbers are fixed."""

from __future__ import annotations

from fedlora.ops.prng import splitmix64
from fedlora.ops.seeds import Stream, client_seed, label_seed, stream_seed


def test_label_seed_is_stable_distinct_and_63_bit() -> None:
    a = label_seed(0, "fedsrd-downlink", 1, "l0")
    assert a == label_seed(0, "fedsrd-downlink", 1, "l0")
    others = {
        label_seed(0, "fedsrd-downlink", 2, "l0"),
        label_seed(1, "fedsrd-downlink", 1, "l0"),
        label_seed(0, "fedsrd-downlink", 1, "l1"),
    }
    assert a not in others and len(others) == 3
    assert all(0 <= s < 2**63 for s in others | {a})


def test_stream_seed_is_the_splitmix_chain_of_its_parts() -> None:
    # Independent re-derivation: fold each part into the state with one SplitMix64 step.
    state = 7
    for part in (int(Stream.UPLOAD), 5, 2):
        state = int(splitmix64(state ^ part, 0, 1)[0])
    assert stream_seed(7, Stream.UPLOAD, 5, 2) == state & (2**63 - 1)
    assert client_seed(7, Stream.UPLOAD, 5, 2) == stream_seed(7, 3, 5, 2)


def test_streams_differ_from_each_other() -> None:
    seeds = {client_seed(0, s, 1, 0) for s in Stream}
    assert len(seeds) == len(Stream)
    assert [int(s) for s in Stream] == [1, 2, 3, 4, 5]  # numbers are part of the format
