"""The client's half of a round, written once: starting view → training → upload.

Every place a client's round is played calls :func:`half_round`: the in-process and Flower
clients (with real local training), the synthetic clients of ``fedlora comm`` and the
benchmarks (with synthetic training), the server when it mirrors a client's start (no
training), and the uplink plug-in when it rebuilds what a client would have uploaded
untrained (training that changes nothing). The seeds are the run's named streams
(:mod:`fedlora.ops.seeds`), so every caller derives the same start and the same upload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from fedlora.methods.base import ClientSpec, ClientStart, Lora, Method, Payload, Tensor
from fedlora.ops.seeds import Stream, client_seed

Train = Callable[[ClientStart], Lora]
"""Local training: the start in, the trained adapter out."""

Phase = Callable[[str], AbstractContextManager[Any]]
"""Something to wrap each phase in (a timer); by default nothing."""


def _untimed(name: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class HalfRound:
    """A client's round: where it started, what it trained, what it uploads."""

    start: ClientStart
    trained: Lora | None = None
    upload: Payload | None = None
    report: dict[str, Any] = field(default_factory=dict)
    own: dict[str, Tensor] = field(default_factory=dict)
    """What the client keeps and never sends (``Method.own_part``)."""


@dataclass(frozen=True)
class Turn:
    """One client's part of one round as the client holds it: who it is, the runtime round,
    what it remembers (``view``; None before its first broadcast), what it received, and
    the part of its model it keeps for itself (``own``; None before it first trained)."""

    client: ClientSpec
    round: int
    view: Mapping[str, Tensor] | None
    broadcast: Payload
    own: Mapping[str, Tensor] | None = None


def client_start(
    method: Method,
    client: ClientSpec,
    view: Mapping[str, Tensor] | None,
    broadcast: Payload,
    round_: int,
) -> ClientStart:
    """``client``'s start in ``round_``: the broadcast applied to its view, seeded."""
    seed = client_seed(method.setup.seed, Stream.CLIENT_START, round_, client.cid)
    return method.client_start(view, broadcast, client, seed)


def half_round(
    method: Method,
    turn: Turn,
    train: Train | None = None,
    *,
    start: ClientStart | None = None,
    phase: Phase = _untimed,
) -> HalfRound:
    """Play ``turn.client``'s half of ``turn.round``: its start and, with ``train``, the
    trained adapter, the upload, its report and what the client keeps (``start``: one
    computed already). Training starts from the start personalised with ``turn.own``; the
    result's ``start`` is the shared one, which the server can mirror. ``phase`` wraps
    ``client_start`` and ``upload`` (``train`` times its own phases:
    :mod:`fedlora.train.timing`)."""
    client, round_ = turn.client, turn.round
    if start is None:
        with phase("client_start"):
            start = client_start(method, client, turn.view, turn.broadcast, round_)
    if train is None:
        return HalfRound(start)
    mine = method.personalise(start, turn.own, client)
    trained = train(mine)
    with phase("upload"):
        seed = client_seed(method.setup.seed, Stream.UPLOAD, round_, client.cid)
        upload = method.upload(mine, trained, client, seed)
    report = method.upload_report(mine, trained, upload, client)
    kept = method.own_part(mine, trained, client)
    return HalfRound(start, trained, upload, report, kept)


def untrained_upload(
    method: Method, client: ClientSpec, start: ClientStart, round_: int
) -> Payload:
    """What ``client`` would upload from ``start`` in ``round_`` had it not trained."""
    turn = Turn(client, round_, None, {})
    done = half_round(method, turn, lambda s: s.adapter, start=start)
    assert done.upload is not None
    return done.upload
