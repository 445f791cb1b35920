"""Every seed the project derives, by name: one place for the streams that both sides use.

Two derivations, each with its own job:

- :func:`stream_seed` — a per-round, per-client integer seed from the run seed and a named
  :class:`Stream` (SplitMix64 chain over integer parts). The runtimes use it to seed a
  client's start adapter, its local training and its upload; a server that must rebuild what
  a client started from (the uplink sparsifier) derives the same number.
- :func:`label_seed` — a seed from text and integer parts (BLAKE2b), for tensors named by
  layer (mask seeds of the downlink, per-layer init streams).

Both are pure integer/byte arithmetic, so they are the same on every platform and Python
version (unlike ``hash``). Changing a stream's number changes every derived value, so the
numbers are fixed.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

from fedlora.ops.prng import splitmix64


class Stream(IntEnum):
    """The per-round seed streams of a federation (their numbers are part of the format)."""

    CLIENT_START = 1
    """``Method.client_start``: fresh adapters and fresh padding slots of a client."""
    TRAIN = 2
    """Local training: batch order and dropout of a client's round."""
    UPLOAD = 3
    """``Method.upload``: random masks of a client's upload."""
    SAMPLING = 4
    """Which clients train in a round (no client id)."""
    SECURE = 5
    """Stochastic rounding of a client's secure-aggregation vector to fixed point."""


def stream_seed(run_seed: int, stream: Stream | int, *parts: int) -> int:
    """A 63-bit seed for ``(run_seed, stream, parts...)`` (SplitMix64 chain)."""
    value = run_seed & 0xFFFFFFFFFFFFFFFF
    for part in (int(stream), *parts):
        value = int(splitmix64(value ^ (part & 0xFFFFFFFFFFFFFFFF), 0, 1)[0])
    return value & 0x7FFFFFFFFFFFFFFF


def client_seed(run_seed: int, stream: Stream, round_: int, cid: int) -> int:
    """The seed of ``stream`` for client ``cid`` in round ``round_`` (1-based)."""
    return stream_seed(run_seed, stream, round_, cid)


def label_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. run seed, a label, round, layer name).

    Defined by BLAKE2b over the parts' decimal/text forms joined by U+001F.
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
