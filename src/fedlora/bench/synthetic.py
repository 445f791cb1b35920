"""Synthetic client uploads for one round, produced through a method's real hooks.

For every client: ``broadcast`` → ``client_start`` → a synthetic "trained" adapter →
``upload``. Only the server step (``aggregate``) is what the benchmark times; everything here
is setup.

The fake training moves every trainable factor by a shared direction plus a smaller
client-specific one, ``δ_k = shared[:r_k] + ε·noise_k`` (``ε = 0.1``), with the shared B
direction's columns scaled by a decaying spectrum ``exp(−i / max(1, r/8))``. Real clients of a
round start from the same global adapter and move in correlated directions, and real LoRA
updates have quickly decaying singular values; plain independent noise would instead give a
flat spectrum, where a rank-r truncation or an energy threshold cuts between nearly equal
singular values and two correct float32 computations may legitimately disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    LayerSpec,
    Lora,
    LoraPair,
    Method,
    ServerState,
    Setup,
    Upload,
)

Tensor = torch.Tensor

CLIENT_NOISE = 0.1
"""Size of each client's own direction relative to the shared one."""


@dataclass
class RoundInputs:
    """The server state before the round and the round's uploads (client-id order).

    ``starts`` holds each client's starting adapter, kept only when ``keep_starts`` was asked
    (the dense reference needs it; for a whole model it would double the memory).
    """

    state: ServerState
    uploads: list[Upload]
    starts: list[ClientStart] = field(default_factory=list)


def make_setup(layers: tuple[LayerSpec, ...], ranks: tuple[int, ...], seed: int = 0) -> Setup:
    """Clients ``0..K-1`` with ranks ``ranks`` and ``alpha = 2r`` (the papers' setting)."""
    clients = tuple(ClientSpec(k, r, 2.0 * r) for k, r in enumerate(ranks))
    return Setup(layers=layers, clients=clients, seed=seed, weighting="samples")


def n_samples(cid: int) -> int:
    """Unequal example counts, so that sample weighting is exercised."""
    return 100 + 50 * cid


def _shared_direction(spec: LayerSpec, rank: int, index: int, seed: int) -> LoraPair:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    decay = torch.exp(-torch.arange(rank, dtype=torch.float32) / max(1.0, rank / 8))
    b = torch.randn(spec.out_features, rank, generator=gen) * decay
    a = torch.randn(rank, spec.in_features, generator=gen)
    return LoraPair(a, b)


def trained_adapter(start: ClientStart, setup: Setup, client: ClientSpec, seed: int) -> Lora:
    """``start.adapter`` moved along the shared + client directions (see module docstring).

    Only factors in ``start.trainable`` move. Step sizes: A by ``0.1/√n`` per unit direction
    (the scale of its PEFT init is ``1/√n``), B by ``0.01``.
    """
    gen = torch.Generator().manual_seed(seed * 7_919 + 31 * client.cid + 1)
    out: Lora = {}
    for index, spec in enumerate(setup.layers):
        a0, b0 = start.adapter[spec.name]
        rank = a0.shape[0]
        shared = _shared_direction(spec, setup.max_rank, index, seed)
        step_a = 0.1 / math.sqrt(spec.in_features)
        a, b = a0, b0
        if "A" in start.trainable:
            noise = torch.randn(rank, spec.in_features, generator=gen)
            a = a0 + step_a * (shared.A[:rank] + CLIENT_NOISE * noise)
        if "B" in start.trainable:
            noise = torch.randn(spec.out_features, rank, generator=gen)
            b = b0 + 0.01 * (shared.B[:, :rank] + CLIENT_NOISE * noise)
        out[spec.name] = LoraPair(a.contiguous(), b.contiguous())
    return out


def synthetic_round(
    method: Method, setup: Setup, seed: int = 0, keep_starts: bool = False
) -> RoundInputs:
    """Drive round 1's client side of ``method`` on synthetic training (see module docstring).

    Parameters
    ----------
    method : a registered method instance
    setup : the federation (every client answers)
    seed : drives the synthetic training and the per-client seeds given to the hooks
    keep_starts : also return every client's :class:`ClientStart`
    """
    state = method.init_server(setup)
    uploads: list[Upload] = []
    starts: list[ClientStart] = []
    for client in setup.clients:
        client_seed = seed * 10_007 + client.cid
        payload = method.broadcast(state, setup, client)
        start = method.client_start(None, payload, setup, client, client_seed)
        del payload
        trained = trained_adapter(start, setup, client, seed)
        up = method.upload(start, trained, setup, client, client_seed)
        uploads.append(Upload(client.cid, n_samples(client.cid), up))
        if keep_starts:
            starts.append(start)
        del start, trained
    return RoundInputs(state=state, uploads=uploads, starts=starts)
