"""Bounded fuzzing of the decoder: any input gives a valid payload or PayloadError, nothing else."""

from __future__ import annotations

import json
import os
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlora.errors import PayloadError
from fedlora.ops.sparse import Sparse
from fedlora.wire import decode, encode

FUZZ = settings(
    # A few seconds in the suite; set FEDLORA_FUZZ_EXAMPLES for a longer local campaign.
    max_examples=int(os.environ.get("FEDLORA_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
LIMITS = {"max_bytes": 1 << 16, "max_elements": 1 << 16}


def valid_buffer() -> bytes:
    gen = torch.Generator().manual_seed(1)
    return encode(
        {
            "a.A": torch.randn(2, 6, generator=gen),
            "a.B": Sparse.from_mask(
                torch.randn(6, 2, generator=gen), torch.rand(6, 2, generator=gen) < 0.5
            ),
            "b.B": Sparse((200,), torch.tensor([3, 50, 51, 199]), torch.ones(4)),
            "c.B": Sparse.from_seeded_mask(torch.randn(30, generator=gen), seed=2, keep_prob=0.3),
        }
    )


VALID = valid_buffer()


def decodes_or_rejects(buf: bytes) -> None:
    try:
        out = decode(buf, **LIMITS)
    except PayloadError:
        return
    assert isinstance(out, dict)
    for value in out.values():
        dense = value.to_dense() if isinstance(value, Sparse) else value
        assert dense.dtype == torch.float32 and bool(torch.isfinite(dense).all())


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(buf: bytes) -> None:
    decodes_or_rejects(buf)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_byte_flips_of_a_valid_payload(edits: list[tuple[int, int]]) -> None:
    buf = bytearray(VALID)
    for pos, byte in edits:
        buf[pos] = byte
    decodes_or_rejects(bytes(buf))


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=40))
def test_insertions_into_a_valid_payload(pos: int, junk: bytes) -> None:
    decodes_or_rejects(VALID[:pos] + junk + VALID[pos:])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def description_paths(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += description_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += description_paths(v, path + (i,))
    return out


@FUZZ
@given(st.data())
def test_semantic_mutations_of_the_description(data: st.DataObject) -> None:
    # Rewrite one value of the fedlora description (keeping the safetensors part intact),
    # which reaches the checks that byte flips rarely get past the JSON parser to.
    (size,) = struct.unpack("<Q", VALID[:8])
    header = json.loads(VALID[8 : 8 + size])
    desc = json.loads(header["__metadata__"]["fedlora"])
    path = data.draw(st.sampled_from(description_paths(desc)[1:]))
    target = desc
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    target[path[-1]] = data.draw(JSON_VALUES)  # type: ignore[index]
    header["__metadata__"]["fedlora"] = json.dumps(desc)
    text = json.dumps(header).encode()
    decodes_or_rejects(struct.pack("<Q", len(text)) + text + VALID[8 + size :])
