"""The only place bytes exist: payload encoding, decoding and byte accounting.

Public API: :func:`encode`, :func:`encode_with_stats`, :func:`decode`,
:func:`decode_with_stats`, :func:`describe`, :class:`WireStats`, :class:`TensorStats`.
The container layout is documented in :mod:`fedlora.wire.container`, the position codes in
:mod:`fedlora.wire.positions`.
"""

from fedlora.wire.codec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ELEMENTS,
    decode,
    decode_with_stats,
    describe,
    encode,
    encode_with_stats,
)
from fedlora.wire.stats import TensorStats, WireStats

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ELEMENTS",
    "TensorStats",
    "WireStats",
    "decode",
    "decode_with_stats",
    "describe",
    "encode",
    "encode_with_stats",
]
