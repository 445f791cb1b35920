"""The server step's inputs for ``python -m benchmarks.server``: round 1's uploads of a method.

Not a round of its own: the benchmark times only ``aggregate``, on a whole model, so the
uploads are made here without the wire (a Llama-3.2-3B round would otherwise hold every
client's encoded payload too) and without the driver's view mirroring. The clients are the
round driver's synthetic clients (:mod:`fedlora.runtime.synthetic`): the same hooks, the same
seed streams (:mod:`fedlora.ops.seeds`) and the same synthetic training as ``fedlora comm``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    LayerSpec,
    Lora,
    Method,
    ServerState,
    Setup,
    Upload,
)
from fedlora.methods.half_round import Turn, half_round
from fedlora.runtime.synthetic import n_samples, trained_adapter

__all__ = ["RoundInputs", "make_setup", "n_samples", "synthetic_round", "trained_adapter"]


@dataclass
class RoundInputs:
    """The server state before the round and the round's uploads (client-id order).

    ``starts`` holds each client's starting adapter, kept only when ``keep_starts`` was asked
    (the dense reference needs it; for a whole model it would double the memory).
    """

    state: ServerState
    uploads: list[Upload]
    starts: list[ClientStart] = field(default_factory=list)


def _trained(start: ClientStart, *, setup: Setup, client: ClientSpec, seed: int) -> Lora:
    return trained_adapter(start, setup, client, seed)


def make_setup(layers: tuple[LayerSpec, ...], ranks: tuple[int, ...], seed: int = 0) -> Setup:
    """Clients ``0..K-1`` with ranks ``ranks`` and ``alpha = 2r`` (the papers' setting)."""
    clients = tuple(ClientSpec(k, r, 2.0 * r) for k, r in enumerate(ranks))
    return Setup(layers=layers, clients=clients, seed=seed, weighting="samples")


def synthetic_round(method: Method, seed: int = 0, keep_starts: bool = False) -> RoundInputs:
    """Round 1's uploads of ``method`` from synthetic clients (see module docstring).

    Parameters
    ----------
    method : a registered method, built for its federation (every client answers)
    seed : drives the synthetic training
    keep_starts : also return every client's :class:`ClientStart`
    """
    setup = method.setup
    state = method.init_server()
    uploads: list[Upload] = []
    starts: list[ClientStart] = []
    for client in setup.clients:
        payload = method.broadcast(state, client)
        done = half_round(
            method,
            Turn(client, 1, None, payload),
            functools.partial(_trained, setup=setup, client=client, seed=seed),
        )
        del payload
        assert done.upload is not None
        uploads.append(Upload(client.cid, n_samples(client.cid), done.upload))
        if keep_starts:
            starts.append(done.start)
        del done
    return RoundInputs(state=state, uploads=uploads, starts=starts)
