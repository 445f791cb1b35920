"""The client step and the server step, shared by every runtime.

Both runtimes (in-process simulation and Flower) call exactly these two functions; they only
differ in how the bytes travel. Everything that crosses between client and server is
encoded by ``fedlora.wire`` and decoded strictly on the other side, so the bytes measured
here are the bytes a network carries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from fedlora.config import RunConfig
from fedlora.errors import PayloadError
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Lora,
    Method,
    Payload,
    ServerState,
    Setup,
    Tensor,
    Upload,
)
from fedlora.methods.half_round import half_round
from fedlora.models.placement import device_of
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime.guard import ClipPolicy, guard, non_finite
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.privacy import clip_upload, noisy_mean
from fedlora.train.adapters import on_device, slot_name
from fedlora.train.batches import Encoded, truncated_count
from fedlora.train.local import LocalResult, train_local
from fedlora.train.timing import Timer, untimed
from fedlora.wire import WireStats, decode, decode_with_stats, encode_with_stats

log = logging.getLogger(__name__)


def max_bytes(cfg: RunConfig) -> int:
    return int(cfg.wire.max_payload_mb * 2**20)


def send(payload: Payload, cfg: RunConfig) -> Transfer:
    """Encode a payload for the wire."""
    data, stats = encode_with_stats(payload, value_dtype=cfg.wire.value_dtype)
    return Transfer(data, stats.nonzero, stats.encodings(), stats)


def receive_broadcast(
    method: Method, setup: Setup, client: ClientSpec, data: bytes, cfg: RunConfig
) -> Payload:
    """Decode a broadcast on the client (strict; the client trusts no server bytes blindly)."""
    return decode(data, expected=None, max_bytes=max_bytes(cfg))


def _local_trainer(
    model: nn.Module,
    method: Method,
    setup: Setup,
    client: ClientSpec,
    examples: Sequence[Encoded],
    cfg: RunConfig,
    round_: int,
    pad_id: int,
    timer: Timer,
    trained: list[LocalResult],
) -> Callable[[ClientStart], Lora]:
    """The client's local training from a start (what :func:`half_round` calls), appending
    each result to ``trained``."""

    def local(start: ClientStart) -> Lora:
        # The regulariser compares the trained factors with the start, on the model's device.
        here = on_device(start, device_of(model))
        trained.append(
            train_local(
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
        )
        return trained[-1].adapter

    return local


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
    own: Mapping[str, Tensor] | None = None,
    timer: Timer = untimed,
) -> ClientOutcome:
    """Apply a decoded broadcast; when ``train``, train locally and encode the upload.

    The caller has already applied the round's base merge to ``model``; ``own`` is the
    client's own part from its last round (``Method.keeps_own_parts``), and the outcome's
    ``own`` what it keeps from this one; ``timer`` sees the phases listed in
    :mod:`fedlora.train.timing`.
    """
    began = time.perf_counter()
    first = half_round(method, setup, client, view, broadcast, round_, phase=timer)
    outcome = ClientOutcome(cid=client.cid, round=round_, start=first.start)
    if not train:
        return outcome
    # The broadcast is applied (the start above) even if training fails below, so a client
    # that crashes in one round is still in sync for the next.
    trained: list[LocalResult] = []
    local = _local_trainer(
        model, method, setup, client, examples, cfg, round_, pad_id, timer, trained
    )

    try:
        done = half_round(
            method,
            setup,
            client,
            view,
            broadcast,
            round_,
            local,
            start=first.start,
            own=own,
            phase=timer,
        )
    except Exception as exc:
        log.warning(
            "round %d: client %d failed: %s: %s", round_, client.cid, type(exc).__name__, exc
        )
        outcome.error = f"client failed: {type(exc).__name__}: {exc}"
        return outcome
    assert done.upload is not None
    result = trained[-1]
    # Under DP nothing about the unclipped update leaves the client (its norms, its ratios)
    outcome.report = {} if cfg.privacy.on else done.report
    outcome.own = done.own
    upload = done.upload
    if cfg.privacy.on:  # the client bounds its own change before anything leaves it
        reference = method.upload_reference(done.start, setup, client)
        upload = clip_upload(upload, reference, cfg.privacy.clip_norm)
    with timer("upload_encode"):
        outcome.upload = send(upload, cfg)
    outcome.n_samples = len(examples)
    outcome.train_loss = result.mean_loss
    outcome.tokens = result.tokens
    outcome.truncated = truncated_count(examples)
    outcome.train_seconds = result.seconds
    outcome.overhead_seconds = time.perf_counter() - began - result.seconds
    return outcome


MAX_REPORTED_SAMPLES = 1 << 53
"""Largest training-sample count a reply may report (an exact float64 integer)."""


@dataclass
class ServerOutcome:
    """The server step's result: the new state (unchanged if the round was skipped)."""

    state: ServerState
    accepted: list[int]
    dropped: dict[int, str]
    skipped: bool
    seconds: float
    capped: dict[int, str] = field(default_factory=dict)
    """Clients whose reported sample count was capped, and how."""
    clipped: dict[int, dict[str, float]] = field(default_factory=dict)
    """Clients whose change was scaled back: ``{"layers": n, "scale": smallest}``."""
    skip_reason: str | None = None
    stats: dict[int, WireStats] = field(default_factory=dict)
    """What the server decoded of each valid upload (its record's parameter counts and
    encodings are these, never what a client says of its own upload)."""


def clip_policy(cfg: RunConfig) -> ClipPolicy:
    fed = cfg.federation
    return ClipPolicy(fed.clip_ratio, fed.clip_norm, fed.clip_action)


def _decoded(
    method: Method, setup: Setup, cid: int, data: bytes, n_samples: int, cfg: RunConfig
) -> tuple[Payload, WireStats]:
    """One upload, decoded strictly against the method's schema (names, shapes, entry kinds,
    finite values); any failure at all raises ``PayloadError``."""
    if type(n_samples) is not int or not 0 < n_samples <= MAX_REPORTED_SAMPLES:
        raise PayloadError(f"client {cid} reports {n_samples!r} training samples")
    try:
        return decode_with_stats(
            data, expected=method.upload_schema(setup, setup.client(cid)), max_bytes=max_bytes(cfg)
        )
    except PayloadError:
        raise
    except Exception as exc:  # a hostile payload must never escape as a crash
        raise PayloadError(f"undecodable upload: {type(exc).__name__}: {exc}") from None


def server_step(
    *,
    method: Method,
    state: ServerState,
    setup: Setup,
    uploads: Mapping[int, tuple[bytes, int]],
    failures: Mapping[int, str],
    cfg: RunConfig,
    references: Mapping[int, Mapping[str, Tensor]],
    round_: int | None = None,
    min_uploads: int = 1,
    dp: PrivacyPlan | None = None,
    timer: Timer = untimed,
) -> ServerOutcome:
    """Decode every upload strictly, drop the bad ones, bound the rest, aggregate them.

    ``uploads`` maps client id -> (encoded bytes, reported n_samples); ``failures`` maps
    client id -> why it sent nothing; ``references`` maps client id -> what it would have
    uploaded untrained (:meth:`Method.upload_reference`), against which changes are bounded
    (:mod:`fedlora.runtime.guard`). With fewer valid uploads than ``federation.min_clients``
    (or ``min_uploads``, the runtime's own floor) the round is skipped and ``state`` is
    returned unchanged; so is a new state holding NaN or Inf. ``round_`` is the runtime round
    the uploads were trained in (see ``Upload.round``). Under differential privacy (``dp``)
    the method aggregates one upload instead, the noisy mean of the clipped changes
    (:mod:`fedlora.runtime.privacy`), whatever the number of uploads.
    """
    began = time.perf_counter()
    t = state.round + 1
    dropped = dict(failures)
    decoded: list[Upload] = []
    stats: dict[int, WireStats] = {}
    for cid in sorted(uploads):
        data, n_samples = uploads[cid]
        try:
            with timer("upload_decode"):
                payload, stats[cid] = _decoded(method, setup, cid, data, n_samples, cfg)
        except PayloadError as exc:
            log.warning("round %d: dropping client %d: %s", t, cid, exc)
            dropped[cid] = f"invalid upload: {exc}"
            continue
        decoded.append(Upload(cid=cid, n_samples=n_samples, payload=payload, round=round_))
    fed = cfg.federation
    if dp is not None:
        private = _private(method, state, setup, decoded, references, dp, dropped, t, began)
        private.stats = stats
        return private
    guarded = guard(
        decoded, references, max_weight_ratio=fed.max_weight_ratio, policy=clip_policy(cfg)
    )
    for cid, why in guarded.refused.items():
        log.warning("round %d: dropping client %d: %s", t, cid, why)
        dropped[cid] = f"refused change: {why}"
    kept = guarded.uploads
    accepted = [u.cid for u in kept]

    def outcome(new: ServerState, skip: str | None) -> ServerOutcome:
        if skip is not None:
            log.warning("round %d skipped: %s", t, skip)
        return ServerOutcome(
            new if skip is None else state,
            accepted,
            dropped,
            skip is not None,
            time.perf_counter() - began,
            guarded.capped,
            guarded.clipped,
            skip,
            stats,
        )

    need = max(fed.min_clients, min_uploads)
    if len(kept) < need:
        return outcome(state, f"{len(kept)} valid uploads, fewer than the {need} required")
    new_state, failed = _aggregated(lambda: method.aggregate(state, kept, setup))
    return outcome(state if new_state is None else new_state, failed)


def _aggregated(step: Callable[[], ServerState]) -> tuple[ServerState | None, str | None]:
    """The method's new state, or why the round must be skipped: whatever the (checked)
    uploads make the maths do, an exception or a state holding NaN or Inf never leaves the
    server step."""
    try:
        new_state = step()
    except Exception as exc:
        log.warning("the server step failed", exc_info=True)
        return None, f"aggregation failed: {type(exc).__name__}: {exc}"[:1024]
    bad = non_finite(new_state)
    if bad is not None:
        return None, f"the new global state is not finite ({bad} holds NaN or Inf)"
    return new_state, None


def _private(
    method: Method,
    state: ServerState,
    setup: Setup,
    decoded: Sequence[Upload],
    references: Mapping[int, Mapping[str, Tensor]],
    dp: PrivacyPlan,
    dropped: dict[int, str],
    t: int,
    began: float,
) -> ServerOutcome:
    """The DP server step: one noisy mean of the clipped changes, aggregated as one upload
    (every client alike: any one's reference and schema are every one's)."""
    accepted = [u.cid for u in decoded]

    def step() -> ServerState:
        if not references:
            raise ValueError("no client could apply this round's broadcast")
        anyone = min(references)
        schema = method.upload_schema(setup, setup.client(anyone))
        shapes = {name: entry.shape for name, entry in schema.items()}
        mean = noisy_mean(decoded, references, shapes, references[anyone], dp, t)
        one = Upload(anyone, 1, mean, decoded[0].round if decoded else None)
        return method.aggregate(state, [one], setup)

    new_state, skip = _aggregated(step)
    return ServerOutcome(
        state if new_state is None else new_state,
        accepted,
        dropped,
        skip is not None,
        time.perf_counter() - began,
        skip_reason=skip,
    )
