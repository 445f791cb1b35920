"""The client step and the server step, shared by every runtime.

Both runtimes (in-process simulation and Flower) call exactly these two functions; they only
differ in how the bytes travel. Everything that crosses between client and server is
encoded by ``fedlora.wire`` and decoded strictly on the other side, so the bytes measured
here are the bytes a network carries.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedlora.config import RunConfig
from fedlora.errors import PayloadError
from fedlora.methods.base import ClientSpec, Method, Payload, ServerState, Setup, Tensor, Upload
from fedlora.methods.common import dense
from fedlora.models.placement import device_of
from fedlora.ops.seeds import Stream, client_seed
from fedlora.ops.sparse import Sparse
from fedlora.train.adapters import on_device, slot_name
from fedlora.train.batches import Encoded, truncated_count
from fedlora.train.local import train_local
from fedlora.train.timing import Timer, untimed
from fedlora.wire import decode, encode_with_stats
from fedlora.wire.stats import WireStats

log = logging.getLogger(__name__)


def max_bytes(cfg: RunConfig) -> int:
    return int(cfg.wire.max_payload_mb * 2**20)


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


def send(payload: Payload, cfg: RunConfig) -> Transfer:
    """Encode a payload for the wire."""
    data, stats = encode_with_stats(payload, value_dtype=cfg.wire.value_dtype)
    return Transfer(data, stats.nonzero, stats.encodings(), stats)


@dataclass
class ClientOutcome:
    """What one client's round produced (``upload`` is None when it failed)."""

    cid: int
    view: dict[str, Tensor]
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
    trainable: frozenset[str] = frozenset({"A", "B"})
    """The factors the client trained (``ClientStart.trainable``)."""


def receive_broadcast(
    method: Method, setup: Setup, client: ClientSpec, data: bytes, cfg: RunConfig
) -> Payload:
    """Decode a broadcast on the client (strict; the client trusts no server bytes blindly)."""
    return decode(data, expected=None, max_bytes=max_bytes(cfg))


def client_step(
    *,
    model: nn.Module,
    method: Method,
    setup: Setup,
    client: ClientSpec,
    view: Mapping[str, Tensor] | None,
    broadcast: Payload,
    examples: Sequence[Encoded],
    cfg: RunConfig,
    round_: int,
    pad_id: int,
    train: bool = True,
    timer: Timer = untimed,
) -> ClientOutcome:
    """Apply a decoded broadcast; when ``train``, train locally and encode the upload.

    The caller has already applied the round's base merge to ``model``; ``timer`` sees the
    phases listed in :mod:`fedlora.train.timing`.
    """
    began = time.perf_counter()
    with timer("client_start"):
        start = method.client_start(
            view,
            broadcast,
            setup,
            client,
            client_seed(setup.seed, Stream.CLIENT_START, round_, client.cid),
        )
    outcome = ClientOutcome(cid=client.cid, view=dict(start.view), trainable=start.trainable)
    if not train:
        return outcome
    # The broadcast is applied (the view above) even if training fails below, so a client
    # that crashes in one round is still in sync for the next.
    try:
        # The regulariser compares the trained factors with the start, on the model's device.
        here = on_device(start, device_of(model))
        result = train_local(
            model,
            slot_name(client.rank, client.alpha),
            start,
            examples,
            cfg.train,
            client_seed(setup.seed, Stream.TRAIN, round_, client.cid),
            pad_id,
            regulariser=lambda current: method.regulariser(current, here),
            timeout_s=cfg.federation.client_timeout_s,
            timer=timer,
            round_=round_,
            rounds=max(round_, cfg.federation.rounds),
        )
        with timer("upload"):
            payload = method.upload(
                start,
                result.adapter,
                setup,
                client,
                client_seed(setup.seed, Stream.UPLOAD, round_, client.cid),
            )
        outcome.report = method.upload_report(start, result.adapter, setup, client)
    except Exception as exc:
        log.warning(
            "round %d: client %d failed: %s: %s", round_, client.cid, type(exc).__name__, exc
        )
        outcome.error = f"client failed: {type(exc).__name__}: {exc}"
        return outcome
    with timer("upload_encode"):
        outcome.upload = send(payload, cfg)
    outcome.n_samples = len(examples)
    outcome.train_loss = result.mean_loss
    outcome.tokens = result.tokens
    outcome.truncated = truncated_count(examples)
    outcome.train_seconds = result.seconds
    outcome.overhead_seconds = time.perf_counter() - began - result.seconds
    return outcome


def payload_norm(payload: Payload) -> float:
    """Frobenius norm of everything a payload carries."""
    total = 0.0
    for value in payload.values():
        vals = value.values if isinstance(value, Sparse) else dense(value)
        total += float(vals.double().pow(2).sum())
    return math.sqrt(total)


def _reject_outliers(
    uploads: list[Upload], ratio: float, dropped: dict[int, str], round_: int
) -> list[Upload]:
    """Drop uploads whose norm exceeds ``ratio`` times the round's median upload norm.

    A median needs company: with fewer than 3 uploads nothing is judged. One client sending a
    wildly scaled update cannot move the median, so it cannot hide itself.
    """
    if ratio <= 0 or len(uploads) < 3:
        return uploads
    norms = {u.cid: payload_norm(u.payload) for u in uploads}
    median = statistics.median(norms.values())
    kept = []
    for u in uploads:
        if median > 0 and norms[u.cid] > ratio * median:
            why = (
                f"outlier upload: norm {norms[u.cid]:.4g} is above {ratio:g} x the median "
                f"{median:.4g}"
            )
            log.warning("round %d: dropping client %d: %s", round_, u.cid, why)
            dropped[u.cid] = why
        else:
            kept.append(u)
    return kept


@dataclass
class ServerOutcome:
    """The server step's result: the new state (unchanged if the round was skipped)."""

    state: ServerState
    accepted: list[int]
    dropped: dict[int, str]
    skipped: bool
    seconds: float


def server_step(
    *,
    method: Method,
    state: ServerState,
    setup: Setup,
    uploads: Mapping[int, tuple[bytes, int]],
    failures: Mapping[int, str],
    cfg: RunConfig,
    round_: int | None = None,
    timer: Timer = untimed,
) -> ServerOutcome:
    """Decode every upload strictly, drop the bad ones, aggregate the rest.

    ``uploads`` maps client id -> (encoded bytes, n_samples); ``failures`` maps client id ->
    why it sent nothing. With fewer valid uploads than ``federation.min_clients`` the round is
    skipped and ``state`` is returned unchanged. ``round_`` is the runtime round the uploads
    were trained in (see ``Upload.round``).
    """
    began = time.perf_counter()
    dropped = dict(failures)
    decoded: list[Upload] = []
    for cid in sorted(uploads):
        data, n_samples = uploads[cid]
        client = setup.client(cid)
        try:
            with timer("upload_decode"):
                payload = decode(
                    data, expected=method.upload_schema(setup, client), max_bytes=max_bytes(cfg)
                )
            if n_samples <= 0:
                raise PayloadError(f"client {cid} reports {n_samples} training samples")
        except PayloadError as exc:
            log.warning("round %d: dropping client %d: %s", state.round + 1, cid, exc)
            dropped[cid] = f"invalid upload: {exc}"
            continue
        decoded.append(Upload(cid=cid, n_samples=n_samples, payload=payload, round=round_))
    decoded = _reject_outliers(decoded, cfg.federation.outlier_norm_ratio, dropped, state.round + 1)
    if len(decoded) < cfg.federation.min_clients:
        log.warning(
            "round %d skipped: %d valid uploads, fewer than min_clients=%d",
            state.round + 1,
            len(decoded),
            cfg.federation.min_clients,
        )
        return ServerOutcome(
            state, [u.cid for u in decoded], dropped, True, time.perf_counter() - began
        )
    new_state = method.aggregate(state, decoded, setup)
    return ServerOutcome(
        new_state, [u.cid for u in decoded], dropped, False, time.perf_counter() - began
    )
