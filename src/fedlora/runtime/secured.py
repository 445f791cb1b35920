"""The round driver's part of secure aggregation: who holds a vector, the secure sum over
the transport's stages, and what the round's record says of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedlora.config import RunConfig
from fedlora.methods.base import Method, Setup
from fedlora.methods.secure import secure_form
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.secure_round import SecureSum, Stage, secure_sum
from fedlora.runtime.secure_sum import quantiser, size_of


def collected(
    secure: bool,
    sampled: Sequence[int],
    replies: Mapping[int, ClientOutcome],
    unapplied: Mapping[int, str],
) -> tuple[dict[int, tuple[bytes, int]], dict[int, str], list[int]]:
    """The sampled clients' uploads (bytes, reported count), why the others have none, and,
    under secure aggregation, who holds a vector for the secure sum instead."""
    uploads, failures, holders = {}, {}, []
    for cid in sampled:
        out = replies.get(cid)
        if cid in unapplied:
            failures[cid] = unapplied[cid]
        elif secure and out is not None and out.held:
            holders.append(cid)
        elif out is None or out.upload is None or secure:
            why = "no vector for the secure sum" if secure else "no reply"
            failures[cid] = (out.error if out is not None else None) or why
        else:
            uploads[cid] = (out.upload.data, out.n_samples)
    return uploads, failures, holders


def secured(
    cfg: RunConfig,
    method: Method,
    setup: Setup,
    t: int,
    holders: Sequence[int],
    stage: Stage,
    replies: Mapping[int, ClientOutcome],
) -> SecureSum:
    """The secure sum of round ``t``'s vectors held by ``holders`` (their size is the
    method's terms' for this round), over the transport's ``stage``; what the stages moved
    is added to each client's transport bytes in ``replies``."""
    size = size_of(secure_form(method).secure_shapes(setup.clients[0], t))
    out = secure_sum(t, holders, size, cfg.federation.secagg, stage)
    for cid, sent in out.sent.items():
        replies[cid].sent_bytes += sent
        replies[cid].received_bytes += out.received.get(cid, 0)
    return out


def secure_summary(cfg: RunConfig, secure: SecureSum | None) -> dict[str, Any] | None:
    """A secure round's record entry: who is in the sum, the threshold, the fixed point."""
    if secure is None:
        return None
    q = quantiser(cfg)
    return {
        "protocol": cfg.federation.secure_aggregation,
        "alive": secure.alive,
        "threshold": secure.threshold,
        "seconds": secure.seconds,
        "modulus_bits": q.bits,
        "scale": q.scale,
        "clipping_range": q.clipping_range,
    }
