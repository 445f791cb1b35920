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

import numpy as np
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
from fedlora.methods.half_round import Turn, half_round
from fedlora.methods.secure import secure_form
from fedlora.models.placement import device_of
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime.guard import ClipPolicy, Guarded, guard, non_finite
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.privacy import clip_upload, noisy_mean
from fedlora.runtime.secure_round import SecureSum
from fedlora.runtime.secure_sum import client_words, flatten, mean_terms, quantiser
from fedlora.train.adapters import on_device, slot_name
from fedlora.train.batches import Encoded, truncated_count
from fedlora.train.local import LocalResult, LocalRun, train_local
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


@dataclass(frozen=True)
class ClientSide:
    """What a client holds for the whole run: the model (its base merges applied by the
    caller), the method and the federation, the run's config, the tokenizer's padding id."""

    model: nn.Module
    method: Method
    setup: Setup
    cfg: RunConfig
    pad_id: int


@dataclass
class _Training:
    """A client's local training from a start (what :func:`half_round` calls), keeping the
    figures of the run (``result``) beside the adapter it returns."""

    side: ClientSide
    turn: Turn
    examples: Sequence[Encoded]
    timer: Timer
    result: LocalResult | None = None

    def __call__(self, start: ClientStart) -> Lora:
        side, client, t = self.side, self.turn.client, self.turn.round
        cfg = side.cfg
        # The regulariser compares the trained factors with the start, on the model's device.
        here = on_device(start, device_of(side.model))
        run = LocalRun(
            seed=client_seed(side.setup.seed, Stream.TRAIN, t, client.cid),
            round=t,
            rounds=max(t, cfg.federation.rounds),
            regulariser=lambda current: side.method.regulariser(current, here),
            timeout_s=cfg.federation.client_timeout_s,
        )
        slot = slot_name(client.rank, client.alpha)
        self.result = train_local(
            side.model, slot, start, self.examples, cfg.train, side.pad_id, run, self.timer
        )
        return self.result.adapter


def client_step(
    side: ClientSide,
    turn: Turn,
    examples: Sequence[Encoded],
    *,
    train: bool = True,
    timer: Timer = untimed,
) -> ClientOutcome:
    """Apply a decoded broadcast; when ``train``, train locally and encode the upload.

    ``turn.own`` is the client's own part from its last round (``Method.keeps_own_parts``),
    and the outcome's ``own`` what it keeps from this one; ``timer`` sees the phases listed
    in :mod:`fedlora.train.timing`.
    """
    began = time.perf_counter()
    method, setup, cfg, client = side.method, side.setup, side.cfg, turn.client
    first = half_round(method, turn, phase=timer)
    outcome = ClientOutcome(cid=client.cid, round=turn.round, start=first.start)
    if not train:
        return outcome
    # The broadcast is applied (the start above) even if training fails below, so a client
    # that crashes in one round is still in sync for the next.
    training = _Training(side, turn, examples, timer)
    try:
        done = half_round(method, turn, training, start=first.start, phase=timer)
    except Exception as exc:
        log.warning(
            "round %d: client %d failed: %s: %s", turn.round, client.cid, type(exc).__name__, exc
        )
        outcome.error = f"client failed: {type(exc).__name__}: {exc}"
        return outcome
    assert done.upload is not None and training.result is not None
    result = training.result
    # Under DP nothing about the unclipped update leaves the client (its norms, its ratios),
    # nor under secure aggregation anything of the update but its share of the sum
    outcome.report = {} if cfg.privacy.on or cfg.federation.secure else done.report
    outcome.own = done.own
    upload = done.upload
    if cfg.privacy.on:  # the client bounds its own change before anything leaves it
        reference = method.upload_reference(done.start, client)
        upload = clip_upload(upload, reference, cfg.privacy.clip_norm)
    with timer("upload_encode"):
        if cfg.federation.secure:
            outcome.words = secure_words(method, setup, cfg, turn, done.start, upload)
            outcome.held = int(outcome.words.size)
        else:
            outcome.upload = send(upload, cfg)
    outcome.n_samples = len(examples)
    outcome.train_loss = result.mean_loss
    outcome.tokens = result.tokens
    outcome.truncated = truncated_count(examples)
    outcome.train_seconds = result.seconds
    outcome.overhead_seconds = time.perf_counter() - began - result.seconds
    return outcome


def secure_words(
    method: Method, setup: Setup, cfg: RunConfig, turn: Turn, start: ClientStart, upload: Payload
) -> np.ndarray:
    """What a client holds for the round's secure sum: its method's terms
    (:mod:`fedlora.methods.secure`) as fixed-point words (:mod:`fedlora.runtime.secure_sum`),
    rounded with the client's own seeded stream."""
    client = turn.client
    form = secure_form(method)
    terms = form.secure_terms(start, upload, client, turn.round)
    vector = flatten(terms, form.secure_shapes(client, turn.round))
    rng = np.random.default_rng(client_seed(setup.seed, Stream.SECURE, turn.round, client.cid))
    clip = cfg.privacy.clip_norm if cfg.privacy.on else None
    return client_words(vector, quantiser(cfg), clip, rng)


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
    method: Method, cid: int, data: bytes, n_samples: int, cfg: RunConfig
) -> tuple[Payload, WireStats]:
    """One upload, decoded strictly against the method's schema (names, shapes, entry kinds,
    finite values); any failure at all raises ``PayloadError``."""
    if type(n_samples) is not int or not 0 < n_samples <= MAX_REPORTED_SAMPLES:
        raise PayloadError(f"client {cid} reports {n_samples!r} training samples")
    try:
        return decode_with_stats(
            data, expected=method.upload_schema(method.setup.client(cid)), max_bytes=max_bytes(cfg)
        )
    except PayloadError:
        raise
    except Exception as exc:  # a hostile payload must never escape as a crash
        raise PayloadError(f"undecodable upload: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Received:
    """What reached the server in a round: each client's upload (encoded bytes, reported
    training-sample count), why the others sent nothing, what each would have uploaded
    untrained (:meth:`Method.upload_reference`: the origin its change is bounded against),
    the runtime round the uploads were trained in (see ``Upload.round``) and, under secure
    aggregation, the sum that stands for the uploads."""

    uploads: Mapping[int, tuple[bytes, int]]
    failures: Mapping[int, str] = field(default_factory=dict)
    references: Mapping[int, Mapping[str, Tensor]] = field(default_factory=dict)
    round: int | None = None
    secure: SecureSum | None = None
    """Under secure aggregation, what the secure stages gave in place of ``uploads``."""


def server_step(
    method: Method,
    state: ServerState,
    cfg: RunConfig,
    received: Received,
    *,
    min_uploads: int = 1,
    dp: PrivacyPlan | None = None,
    timer: Timer = untimed,
) -> ServerOutcome:
    """Decode every upload strictly, drop the bad ones, bound the rest, aggregate them.

    Changes are bounded by :mod:`fedlora.runtime.guard`. With fewer valid uploads than
    ``federation.min_clients`` (or ``min_uploads``, the runtime's own floor) the round is
    skipped and ``state`` is returned unchanged; so is a new state holding NaN or Inf, and
    one the method's maths could not compute. Under differential privacy (``dp``) the method
    aggregates one upload instead, the noisy mean of the clipped changes
    (:mod:`fedlora.runtime.privacy`), whatever the number of uploads.
    """
    began = time.perf_counter()
    if received.secure is not None:
        return _secure_step(method, state, cfg, received, min_uploads, dp)
    t = state.round + 1
    dropped = dict(received.failures)
    decoded: list[Upload] = []
    stats: dict[int, WireStats] = {}
    for cid in sorted(received.uploads):
        data, n_samples = received.uploads[cid]
        try:
            with timer("upload_decode"):
                payload, stats[cid] = _decoded(method, cid, data, n_samples, cfg)
        except PayloadError as exc:
            log.warning("round %d: dropping client %d: %s", t, cid, exc)
            dropped[cid] = f"invalid upload: {exc}"
            continue
        decoded.append(Upload(cid, n_samples, payload, received.round))
    fed = cfg.federation
    if dp is not None:
        step = _private(method, state, decoded, received.references, dp)
        guarded = Guarded(decoded, {}, {}, {})
    else:
        guarded = guard(
            decoded,
            received.references,
            max_weight_ratio=fed.max_weight_ratio,
            policy=clip_policy(cfg),
        )
        kept = guarded.uploads
        step = lambda: method.aggregate(state, kept)  # noqa: E731
    for cid, why in guarded.refused.items():
        log.warning("round %d: dropping client %d: %s", t, cid, why)
        dropped[cid] = f"refused change: {why}"
    # Under DP a round releases its noisy mean whatever the count (skipping would say it)
    need = 0 if dp is not None else max(fed.min_clients, min_uploads)
    new_state: ServerState | None = None
    skip: str | None = f"{len(guarded.uploads)} valid uploads, fewer than the {need} required"
    if len(guarded.uploads) >= need:
        new_state, skip = _aggregated(step)
    if skip is not None:
        log.warning("round %d skipped: %s", t, skip)
    return ServerOutcome(
        state if new_state is None else new_state,
        [u.cid for u in guarded.uploads],
        dropped,
        skip is not None,
        time.perf_counter() - began,
        guarded.capped,
        guarded.clipped,
        skip,
        stats,
    )


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
    decoded: Sequence[Upload],
    references: Mapping[int, Mapping[str, Tensor]],
    dp: PrivacyPlan,
) -> Callable[[], ServerState]:
    """The DP server step: one noisy mean of the clipped changes, aggregated as one upload
    (every client alike: any one's reference and schema are every one's)."""

    def step() -> ServerState:
        if not references:
            raise ValueError("no client could apply this round's broadcast")
        anyone = min(references)
        schema = method.upload_schema(method.setup.client(anyone))
        shapes = {name: entry.shape for name, entry in schema.items()}
        mean = noisy_mean(decoded, references, shapes, references[anyone], dp, state.round + 1)
        one = Upload(anyone, 1, mean, decoded[0].round if decoded else None)
        return method.aggregate(state, [one])

    return step


def _secure_step(
    method: Method,
    state: ServerState,
    cfg: RunConfig,
    received: Received,
    min_uploads: int,
    dp: PrivacyPlan | None,
) -> ServerOutcome:
    """The server step of a secure round: the method's step on the mean of the alive
    clients' terms, read from the unmasked sum (plus the noise of a private run, over its
    data-independent denominator); nothing of any one client is seen, so nothing is bounded
    here (the clients clipped their own)."""
    began = time.perf_counter()
    summed = received.secure
    assert summed is not None
    t = state.round + 1
    trained = received.round if received.round is not None else t
    dropped = {**received.failures, **summed.dropped}
    need = 0 if dp is not None else max(cfg.federation.min_clients, min_uploads)
    skip = summed.skip
    if skip is None and len(summed.alive) < need:
        skip = f"{len(summed.alive)} clients in the secure sum, fewer than the {need} required"
    new_state: ServerState | None = None
    if skip is None:
        form = secure_form(method)

        def step() -> ServerState:
            if not received.references or summed.total is None:
                raise ValueError("no client could apply this round's broadcast")
            anyone = min(received.references)
            shapes = form.secure_shapes(method.setup.client(anyone), trained)
            count = dp.denominator if dp is not None else len(summed.alive)
            noise = (dp, t) if dp is not None else None
            mean = mean_terms(summed.total, quantiser(cfg), shapes, count, noise)
            return form.aggregate_mean(state, mean, received.references[anyone], trained)

        new_state, skip = _aggregated(step)
    if skip is not None:
        log.warning("round %d skipped: %s", t, skip)
    return ServerOutcome(
        state if new_state is None else new_state,
        summed.alive,
        dropped,
        skip is not None,
        time.perf_counter() - began,
        skip_reason=skip,
    )
