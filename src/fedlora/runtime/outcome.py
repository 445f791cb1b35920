"""What one client's round produced, in every runtime.

One type carries a client's result from where it is made to the driver: the in-process
client step fills a :class:`ClientOutcome` directly, a Flower node sends it as a message
(:mod:`fedlora.runtime.flower.protocol`) and the server reads it back as one, and the
synthetic clients of ``fedlora comm`` build one too. The transport adds what it moved.
Nothing here imports torch, so the Flower message format stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlora.methods.base import ClientStart
    from fedlora.wire.stats import WireStats


@dataclass(frozen=True)
class Transfer:
    """One encoded payload and what it carries."""

    data: bytes
    params: int
    encodings: dict[str, dict[str, int]]
    stats: WireStats | None = None
    """The encoder's full accounting, where the sender kept it (not sent on the wire)."""

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass
class ClientOutcome:
    """One client's round: its upload (None when it has none) and the figures of its
    training, or why it failed; ``in_sync`` is False when a node's memory was not that of
    the round before (it is re-synchronised); ``nonce`` echoes its instruction's."""

    cid: int
    round: int = 0
    upload: Transfer | None = None
    n_samples: int = 0
    train_loss: float | None = None
    tokens: int = 0
    truncated: int = 0
    """How many of the client's training examples ``train.seq_len`` cut."""
    train_seconds: float = 0.0
    overhead_seconds: float = 0.0
    error: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    start: ClientStart | None = None
    """The client's start, where it was played in the server's process (the driver then
    mirrors its view from it instead of computing it again)."""
    in_sync: bool = True
    nonce: str = ""
    sent_bytes: int = 0
    """Everything the transport moved to this client this round (its broadcast, and on
    Flower the config and re-sync blobs of the message)."""
    received_bytes: int = 0
    """Everything the transport moved back (the upload, and on Flower the reply's fields)."""
    own: dict[str, Any] = field(default_factory=dict)
    """What the client keeps for itself (``Method.own_part``): stays on the client's side,
    never part of a reply."""
    held: int = 0
    """Under secure aggregation: how many values of the round's vector the client holds,
    waiting to be masked (:mod:`fedlora.runtime.secure_round`); it uploads nothing else."""
    words: Any = None
    """Those values as fixed-point words (a numpy array): stays on the client's side."""
