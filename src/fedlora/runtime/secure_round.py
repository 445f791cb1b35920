"""A round's secure sum over any transport: the server's four requests, a client's answers.

After a round's training every sampled client that trained holds its vector of words
(:mod:`fedlora.runtime.secure_sum`); nothing of it has left the client. The server then
drives the four stages of :mod:`fedlora.runtime.secagg` as four message exchanges, each a
plain record of integers, bytes and their lists, the same on every transport:

=========  =====================================  ======================================
stage      request (server → client)              reply (client → server)
=========  =====================================  ======================================
keys       round, threshold, bits                 pk1, pk2
shares     round, ids, pk1s, pk2s (neighbours')   to (ids), ciphertexts, commitment
mask       round, from (ids), ciphertexts         masked (the words, masked, packed)
unmask     round, alive, dropped                  of (ids), shares
=========  =====================================  ======================================

A transport supplies one function, ``stage(name, requests) -> replies`` (a reply may be a
string saying why there is none); :func:`secure_sum` does the rest and never raises on what
a client sends: a client whose reply breaks the rules is dropped with the reason, and a
round whose secrets cannot be rebuilt (fewer than the threshold survive) has no sum, with
the reason. A client answers with :func:`answer`, keeping its side between messages in a
:class:`Held` (a Flower node: in its ``context.state``, as :meth:`Held.to_record`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedlora.config import SecAggConfig
from fedlora.runtime.flower.protocol import RECORD, content_bytes
from fedlora.runtime.masking import word_dtype
from fedlora.runtime.secagg import SecAggClient, SecAggError, SecAggServer, neighbour_ring

log = logging.getLogger(__name__)

STAGES = ("keys", "shares", "mask", "unmask")
Message = dict[str, Any]
"""A request or a reply: integers, bytes, and lists of either."""
Stage = Callable[[str, Mapping[int, Message]], Mapping[int, "Message | str"]]


def message_bytes(message: Message) -> int:
    """Bytes of a message as Flower carries it (the protobuf of its one record)."""
    return content_bytes(RecordDict({RECORD: ConfigRecord(message)}))


def _ints(message: Mapping[str, Any], name: str) -> list[int]:
    value = message.get(name)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise SecAggError(f"{name!r} is not a list of integers")
    return value


def _blobs(message: Mapping[str, Any], name: str) -> list[bytes]:
    value = message.get(name)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise SecAggError(f"{name!r} is not a list of bytes")
    return value


def _blob(message: Mapping[str, Any], name: str) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes):
        raise SecAggError(f"{name!r} is not bytes")
    return value


def _int(message: Mapping[str, Any], name: str) -> int:
    value = message.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SecAggError(f"{name!r} is not an integer")
    return value


def _pairs(message: Mapping[str, Any], ids: str, blobs: str) -> dict[int, bytes]:
    keys, values = _ints(message, ids), _blobs(message, blobs)
    if len(keys) != len(values) or len(set(keys)) != len(keys):
        raise SecAggError(f"{ids!r} and {blobs!r} do not pair up")
    return dict(zip(keys, values, strict=True))


# -- the client's side ---------------------------------------------------------------------


@dataclass
class Held:
    """What a client keeps through its secure round: the round, its words (never sent
    unmasked), and its protocol state once the keys stage began."""

    round: int
    words: np.ndarray
    protocol: SecAggClient | None = None

    def to_record(self) -> Message:
        """The state as a flat record (a Flower node keeps it in ``context.state``)."""
        out: Message = {"round": self.round, "words": self.words.tobytes()}
        out["bits"] = 64 if self.words.dtype.itemsize == 8 else 32
        if self.protocol is not None:
            out.update({f"p.{k}": v for k, v in self.protocol.to_record().items()})
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Held:
        """The state :meth:`to_record` wrote (``SecAggError`` on a malformed one)."""
        dtype = word_dtype(_int(record, "bits"))
        words = np.frombuffer(_blob(record, "words"), dtype=dtype).copy()
        proto = {k[2:]: v for k, v in record.items() if k.startswith("p.")}
        protocol = SecAggClient.from_record(proto) if proto else None
        return cls(_int(record, "round"), words, protocol)


def answer(nid: int, stage: str, request: Mapping[str, Any], held: Held) -> Message:
    """Client ``nid``'s reply to one stage's request (``held`` is updated in place);
    ``SecAggError`` when the request breaks the rules (e.g. a round it holds no words of)."""
    if _int(request, "round") != held.round:
        raise SecAggError(f"a {stage} request for round {request.get('round')}, not {held.round}")
    if stage == "keys":
        bits = _int(request, "bits")
        if word_dtype(bits) != held.words.dtype:
            raise SecAggError(f"{bits}-bit words asked; this client holds {held.words.dtype}")
        held.protocol = SecAggClient.start(nid, _int(request, "threshold"), bits)
        return {"pk1": held.protocol.keys[0], "pk2": held.protocol.keys[1]}
    client = held.protocol
    if client is None:
        raise SecAggError(f"a {stage} request before the keys stage")
    if stage == "shares":
        ids, pk1, pk2 = _ints(request, "ids"), _blobs(request, "pk1"), _blobs(request, "pk2")
        if not len(ids) == len(pk1) == len(pk2):
            raise SecAggError("neighbours' ids and keys do not pair up")
        out = client.share_keys(dict(zip(ids, zip(pk1, pk2, strict=True), strict=True)))
        return {
            "to": sorted(out),
            "ciphertexts": [out[j] for j in sorted(out)],
            "commitment": client.commitment,
        }
    if stage == "mask":
        masked = client.mask(held.words, _pairs(request, "from", "ciphertexts"))
        return {"masked": masked.tobytes()}
    if stage == "unmask":
        shares = client.reveal(_ints(request, "alive"), _ints(request, "dropped"))
        return {"of": sorted(shares), "shares": [shares[j] for j in sorted(shares)]}
    raise SecAggError(f"unknown secure aggregation stage {stage!r}")


# -- the server's side ---------------------------------------------------------------------


@dataclass
class SecureSum:
    """What the secure stages gave: the sum of the alive clients' words (None without
    one, ``skip`` saying why), who is in it, who dropped out and why, and the bytes each
    client's stages moved (its masked vector's among them)."""

    total: np.ndarray | None
    alive: list[int]
    dropped: dict[int, str] = field(default_factory=dict)
    skip: str | None = None
    threshold: int = 0
    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    masked_bytes: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    """Wall seconds of the four stages (the clients' answers included, where they run here)."""


def threshold_for(holders: int, opts: SecAggConfig) -> tuple[int, int]:
    """``(neighbourhood size, reconstruction threshold)`` of a round with ``holders``."""
    ring = holders if opts.num_shares == 0 else min(holders, opts.num_shares | 1)
    return ring, opts.reconstruction_threshold or ring // 2 + 1


@dataclass
class _Round:
    """The server's running state of one secure sum (see :func:`secure_sum`)."""

    t: int
    stage: Stage
    out: SecureSum

    def exchange(
        self, name: str, requests: Mapping[int, Message], read: Callable[[int, Message], None]
    ) -> None:
        """One stage: send, count, read each reply; a client without a usable one drops."""
        for cid, req in requests.items():
            self.out.sent[cid] = self.out.sent.get(cid, 0) + message_bytes(req)
        replies = self.stage(name, requests) if requests else {}
        for cid in requests:
            reply = replies.get(cid, "no reply")
            try:
                if isinstance(reply, str):
                    raise SecAggError(reply[:1024])
                self.out.received[cid] = self.out.received.get(cid, 0) + message_bytes(reply)
                read(cid, reply)
            except Exception as exc:  # nothing a client sends may end the round
                why = f"secure aggregation {name}: {exc}"[:1024]
                log.warning("round %d: client %d dropped: %s", self.t, cid, why)
                self.out.dropped[cid] = why

    def keys(self, holders: Sequence[int], opts: SecAggConfig) -> SecAggServer:
        """Stage 0: every holder's public keys; a key two clients sent drops both."""
        keys: dict[int, tuple[bytes, bytes]] = {}

        def read(cid: int, reply: Message) -> None:
            keys[cid] = (_blob(reply, "pk1"), _blob(reply, "pk2"))

        ask = {"round": self.t, "threshold": self.out.threshold, "bits": opts.modulus_bits}
        self.exchange("keys", dict.fromkeys(holders, ask), read)
        seen: dict[bytes, list[int]] = {}
        for cid, pair in keys.items():
            for k in pair:
                seen.setdefault(k, []).append(cid)
        for cids in seen.values():
            if len(cids) > 1:  # a replayed key: none of its claimants can be told apart
                for cid in cids:
                    keys.pop(cid, None)
                    self.out.dropped[cid] = "secure aggregation keys: a key another client sent"
        order = sorted(keys)
        ring = neighbour_ring(order, opts.num_shares or len(order), random.SystemRandom())
        return SecAggServer(ring, self.out.threshold, opts.modulus_bits, keys)

    def shares(self, server: SecAggServer) -> None:
        """Stage 1: each client's encrypted shares, addressed to exactly its neighbours."""

        def read(cid: int, reply: Message) -> None:
            sent = _pairs(reply, "to", "ciphertexts")
            if set(sent) != set(server.keys_for(cid)) - {cid}:  # or masks would not cancel
                raise SecAggError("shares not addressed to exactly its neighbours")
            server.commitments[cid] = _blob(reply, "commitment")
            server.shared[cid] = sent

        requests = {}
        for cid in sorted(server.keys):
            known = server.keys_for(cid)
            ids = sorted(known)
            pk1, pk2 = [known[j][0] for j in ids], [known[j][1] for j in ids]
            requests[cid] = {"round": self.t, "ids": ids, "pk1": pk1, "pk2": pk2}
        self.exchange("shares", requests, read)

    def mask(self, server: SecAggServer, size: int) -> None:
        """Stage 2: each client's masked vector, summed as it arrives."""
        dtype = word_dtype(server.bits)

        def read(cid: int, reply: Message) -> None:
            masked = _blob(reply, "masked")
            if len(masked) != size * dtype.itemsize:
                raise SecAggError(f"a masked vector of {len(masked)} bytes, not {size} words")
            server.add_masked(cid, np.frombuffer(masked, dtype=dtype), size)
            self.out.masked_bytes[cid] = len(masked)

        requests = {}
        for cid in sorted(server.shared):
            got = server.shares_for(cid)
            src = sorted(got)
            requests[cid] = {"round": self.t, "from": src, "ciphertexts": [got[j] for j in src]}
        self.exchange("mask", requests, read)

    def unmask(self, server: SecAggServer) -> None:
        """Stage 3: the shares that remove the masks; the sum, or why there is none."""
        revealed: dict[int, dict[int, bytes]] = {}

        def read(cid: int, reply: Message) -> None:
            revealed[cid] = _pairs(reply, "of", "shares")

        requests = {}
        for cid in sorted(server.masked):
            alive, dropped = server.unmask_request(cid)
            requests[cid] = {"round": self.t, "alive": alive, "dropped": dropped}
        self.exchange("unmask", requests, read)
        self.out.alive = sorted(server.masked)
        try:
            self.out.total = server.unmask(revealed)
        except SecAggError as exc:
            self.out.skip = f"secure aggregation: {exc}"
        except Exception as exc:  # shares that rebuild garbage must not end the run either
            self.out.skip = f"secure aggregation: {type(exc).__name__}: {exc}"[:1024]


def secure_sum(
    t: int, holders: Sequence[int], size: int, opts: SecAggConfig, stage: Stage
) -> SecureSum:
    """Run the four stages with the clients ``holders`` (each holds ``size`` words of
    ``opts.modulus_bits``); see :class:`SecureSum`."""
    began = time.perf_counter()
    _, threshold = threshold_for(len(holders), opts)
    run = _Round(t, stage, SecureSum(None, [], threshold=threshold))
    if len(holders) < max(threshold, 2):
        run.out.skip = f"{len(holders)} clients hold vectors, fewer than the threshold {threshold}"
    else:
        server = run.keys(holders, opts)
        run.shares(server)
        run.mask(server, size)
        run.unmask(server)
    run.out.seconds = time.perf_counter() - began
    return run.out
